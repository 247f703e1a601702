"""Events sent again under a stored event_id, as the worker decodes them (masked, from protobuf or JSON) and appends
them: a copy is a silent duplicate however it was encoded and whatever the service filled in; anything else under
the id, in the same batch or from another tenant, is a conflict naming the stored position and what differs."""

from __future__ import annotations

import time

from audit.v1 import event_pb2
from audit_client import Limits
from audit_service.core.decode import decode_event
from audit_service.store.append import LogAppender
from google.protobuf import json_format

from ..factories import make_event, stamp


def decoded(event: event_pb2.AuditEvent, *, as_json: bool = False):
    """The content the worker appends for this event, published as protobuf or as JSON."""
    if as_json:
        data, headers = json_format.MessageToJson(event).encode(), {"Content-Type": "application/json"}
    else:
        data, headers = event.SerializeToString(), None
    return decode_event(data, headers, now_seconds=time.time(), limits=Limits()).content


async def test_copies_in_one_batch_and_another_tenants_event_under_the_id(app):
    event = stamp(make_event("acme"))
    other = event_pb2.AuditEvent()
    other.CopyFrom(event)
    other.message = "something else"
    foreign = event_pb2.AuditEvent()
    foreign.CopyFrom(event)
    foreign.tenant = "globex"

    batch = [decoded(event), decoded(other), decoded(event, as_json=True), decoded(foreign)]
    result = await LogAppender().append(app, batch)
    assert (result.appended, result.duplicates) == (1, 1)
    assert [(c.index, c.stored_position, c.fields) for c in result.conflicts] == [
        (1, 1, ("message",)),
        (3, 1, ("tenant",)),
    ]
    again = await LogAppender().append(app, [decoded(foreign), decoded(event)])
    assert (again.appended, again.duplicates, [c.index for c in again.conflicts]) == (0, 1, [0])


async def test_json_and_protobuf_copies_of_an_event_with_secrets_and_awkward_numbers_are_one_event(app):
    event = stamp(make_event("acme"))
    event.metadata.update({"api_key": "s3cr3t", "n": 1, "f": 0.1, "big": 1e300, "tiny": 5e-324, "zero": -0.0})
    event.metadata["nested"] = {"list": [1, "x", None, {"password": 3}]}
    first = await LogAppender().append(app, [decoded(event, as_json=True)])
    again = await LogAppender().append(app, [decoded(event), decoded(event, as_json=True)])
    assert (first.appended, again.appended, again.duplicates, again.conflicts) == (1, 0, 2, ())


async def test_a_change_before_the_service_filled_from_a_masked_state_is_no_difference(app):
    create = stamp(make_event("acme"))
    create.change.after.Clear()
    create.change.after.update({"replicas": 1, "db_password": "hunter2"})
    update = stamp(make_event("acme"))
    update.resource.CopyFrom(create.resource)
    update.change.after.Clear()
    update.change.after.update({"replicas": 2, "db_password": "hunter2"})
    appender = LogAppender()
    await appender.append(app, [decoded(create)])
    await appender.append(app, [decoded(update)])  # change.before filled from the state, masked

    with_before = event_pb2.AuditEvent()
    with_before.CopyFrom(update)
    with_before.change.before.update({"replicas": 1, "db_password": "anything: masked too"})
    wrong_before = event_pb2.AuditEvent()
    wrong_before.CopyFrom(update)
    wrong_before.change.before.update({"replicas": 7})
    result = await appender.append(app, [decoded(update), decoded(with_before), decoded(wrong_before)])
    assert (result.appended, result.duplicates) == (0, 2)
    assert [(c.index, c.stored_position, c.fields) for c in result.conflicts] == [(2, 2, ("change_before",))]
