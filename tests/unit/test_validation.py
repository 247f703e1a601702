"""validate_event: every rule of the event contract, with the field and reason it reports."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from audit.v1 import event_pb2
from audit_client.errors import InvalidEventError
from audit_client.validation import SERVICE_FIELDS, Limits, clear_service_fields, validate_event

NOW = 1_750_000_000.0
EVENT_ID = "0190b2a0-7c3e-7def-8abc-0123456789ab"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def valid_event() -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        event_id=EVENT_ID,
        tenant="acme",
        action="api_key.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id="user-1", type=event_pb2.SUBJECT_TYPE_USER, slug="alice", email="a@example.com"),
        resource=event_pb2.Resource(type="api_key", id="key-1", name="ci", fqn="acme:ci"),
        parent_resource=event_pb2.Resource(type="workspace", id="ws-1"),
        request=event_pb2.RequestContext(
            route="/api/v1/keys", method="POST", ip_address="192.0.2.10", user_agent="curl/8"
        ),
        cluster_id="cluster-a",
        workspace_id="ws-1",
        message="created API key ci",
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
    )
    event.metadata.update({"count": 3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}})
    event.change.before.update({"enabled": False})
    event.change.after.update({"enabled": True})
    event.occurred_at.FromSeconds(int(NOW) - 60)
    return event


def nested_struct(depth: int) -> dict:
    """A dict whose innermost value sits `depth` objects deep (depth 1 is {"leaf": 1})."""
    document: dict = {"leaf": 1}
    for _ in range(depth - 1):
        document = {"child": document}
    return document


def nested_list(depth: int) -> list:
    document: list = [1]
    for _ in range(depth - 1):
        document = [document]
    return document


def check(event: event_pb2.AuditEvent, limits: Limits | None = None) -> None:
    if limits is None:
        validate_event(event, now_seconds=NOW)
    else:
        validate_event(event, now_seconds=NOW, limits=limits)


def test_valid_event_passes() -> None:
    check(valid_event())


def test_minimal_event_passes() -> None:
    event = event_pb2.AuditEvent(event_id=EVENT_ID, tenant="a", action="X", outcome=event_pb2.OUTCOME_DENIED)
    event.actor.slug = "bot"  # slug alone identifies the actor; type UNSPECIFIED is allowed
    event.occurred_at.FromSeconds(int(NOW))
    check(event)


Mutation = Callable[[event_pb2.AuditEvent], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(event: event_pb2.AuditEvent) -> None:
        *parents, name = path.split(".")
        target = event
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


def _clear(name: str) -> Mutation:
    return lambda event: event.ClearField(name)


def _metadata(document: dict) -> Mutation:
    def mutate(event: event_pb2.AuditEvent) -> None:
        event.metadata.Clear()
        event.metadata.update(document)

    return mutate


def _occurred_at(seconds: float, nanos: int = 0) -> Mutation:
    def mutate(event: event_pb2.AuditEvent) -> None:
        event.occurred_at.seconds = int(seconds)
        event.occurred_at.nanos = nanos

    return mutate


def _ids(trace_id: str, span_id: str) -> Mutation:
    def mutate(event: event_pb2.AuditEvent) -> None:
        event.trace_id = trace_id
        event.span_id = span_id

    return mutate


def _nul_key(event: event_pb2.AuditEvent) -> None:
    event.metadata.fields["bad\x00key"].string_value = "v"


def _value_without_kind(event: event_pb2.AuditEvent) -> None:
    event.metadata.fields["empty"].Clear()  # indexing the map creates the entry; it has no kind set


def _resource(field: str, *, parent: bool = False) -> Mutation:
    """The resource (or parent resource) named only by `field`: no type."""

    def mutate(event: event_pb2.AuditEvent) -> None:
        resource = event.parent_resource if parent else event.resource
        resource.Clear()
        setattr(resource, field, f"only-{field}")

    return mutate


def _no_resource_types(event: event_pb2.AuditEvent) -> None:
    event.resource.type = ""
    event.parent_resource.type = ""


def _list_item_with_nul(event: event_pb2.AuditEvent) -> None:
    event.change.after.update({"items": ["fine", "bad\x00"]})


def _nested_struct_in_change(event: event_pb2.AuditEvent) -> None:
    event.change.before.update({"outer": {"inner": "x\x00"}})


def _no_actor(event: event_pb2.AuditEvent) -> None:
    event.ClearField("actor")


def _actor_without_identity(event: event_pb2.AuditEvent) -> None:
    event.actor.id = ""
    event.actor.slug = ""


REFUSED: list[tuple[str, Mutation, str, str]] = [
    # (case id, mutation, field, reason)
    ("missing event_id", _set("event_id", ""), "event_id", "missing_field"),
    ("missing tenant", _set("tenant", ""), "tenant", "missing_field"),
    ("missing action", _set("action", ""), "action", "missing_field"),
    ("missing outcome", _set("outcome", event_pb2.OUTCOME_UNSPECIFIED), "outcome", "missing_field"),
    ("missing actor", _no_actor, "actor", "missing_field"),
    ("actor with neither id nor slug", _actor_without_identity, "actor", "missing_field"),
    ("missing occurred_at", _clear("occurred_at"), "occurred_at", "missing_field"),
    ("event_id not a UUID", _set("event_id", "not-a-uuid"), "event_id", "invalid_field"),
    ("event_id uppercase", _set("event_id", EVENT_ID.upper()), "event_id", "invalid_field"),
    ("event_id without hyphens", _set("event_id", EVENT_ID.replace("-", "")), "event_id", "invalid_field"),
    ("event_id in braces", _set("event_id", "{" + EVENT_ID + "}"), "event_id", "invalid_field"),
    ("event_id as URN", _set("event_id", "urn:uuid:" + EVENT_ID), "event_id", "invalid_field"),
    ("tenant with a dot", _set("tenant", "acme.corp"), "tenant", "invalid_field"),
    ("tenant uppercase", _set("tenant", "Acme"), "tenant", "invalid_field"),
    ("tenant too long", _set("tenant", "a" * 64), "tenant", "invalid_field"),
    ("tenant starting with a dash", _set("tenant", "-acme"), "tenant", "invalid_field"),
    ("tenant with a space", _set("tenant", "ac me"), "tenant", "invalid_field"),
    ("action starting with a digit", _set("action", "1create"), "action", "invalid_field"),
    ("action with a space", _set("action", "api key.create"), "action", "invalid_field"),
    ("action too long", _set("action", "a" * 129), "action", "invalid_field"),
    ("unknown outcome", _set("outcome", 99), "outcome", "invalid_field"),
    # Short texts are limited in bytes of UTF-8 (they are kept in index entries), not in characters.
    ("actor.id one byte too long", _set("actor.id", "i" * 1025), "actor.id", "invalid_field"),
    ("actor.id of 257 4-byte characters", _set("actor.id", "\U0001f600" * 257), "actor.id", "invalid_field"),
    ("actor.id of 1,000 CJK characters", _set("actor.id", "\u4e2d" * 1000), "actor.id", "invalid_field"),
    ("resource.id of 1,024 4-byte chars", _set("resource.id", "\U00010400" * 1024), "resource.id", "invalid_field"),
    ("resource.type of 700 Cyrillic chars", _set("resource.type", "\u0436" * 700), "resource.type", "invalid_field"),
    ("user_agent of 513 2-byte chars", _set("request.user_agent", "é" * 513), "request.user_agent", "invalid_field"),
    ("unknown actor type", _set("actor.type", 99), "actor.type", "invalid_field"),
    ("NUL in actor.display_name", _set("actor.display_name", "Al\x00ice"), "actor.display_name", "invalid_field"),
    ("NUL in resource.name", _set("resource.name", "x\x00"), "resource.name", "invalid_field"),
    ("NUL in request.user_agent", _set("request.user_agent", "\x00"), "request.user_agent", "invalid_field"),
    ("NUL in cluster_id", _set("cluster_id", "c\x00"), "cluster_id", "invalid_field"),
    ("NUL in message", _set("message", "hello\x00world"), "message", "invalid_field"),
    ("NUL in a metadata value", _metadata({"key": "va\x00lue"}), "metadata", "invalid_field"),
    ("NUL in a metadata key", _nul_key, "metadata", "invalid_field"),
    ("NUL in a nested change.before value", _nested_struct_in_change, "change.before", "invalid_field"),
    ("NUL in a change.after list item", _list_item_with_nul, "change.after", "invalid_field"),
    ("NaN in metadata", _metadata({"x": math.nan}), "metadata", "invalid_field"),
    ("infinity in metadata", _metadata({"x": math.inf}), "metadata", "invalid_field"),
    ("negative infinity nested in metadata", _metadata({"a": {"b": [-math.inf]}}), "metadata", "invalid_field"),
    ("metadata value without a kind", _value_without_kind, "metadata", "invalid_field"),
    ("metadata objects nested too deep", _metadata(nested_struct(33)), "metadata", "invalid_field"),
    ("metadata lists nested too deep", _metadata({"list": nested_list(32)}), "metadata", "invalid_field"),
    ("IP address garbage", _set("request.ip_address", "not-an-ip"), "request.ip_address", "invalid_field"),
    ("IPv4 octet out of range", _set("request.ip_address", "192.0.2.256"), "request.ip_address", "invalid_field"),
    ("IPv4 with leading zeros", _set("request.ip_address", "192.0.2.010"), "request.ip_address", "invalid_field"),
    ("IPv4-mapped IPv6 uppercase", _set("request.ip_address", "::FFFF:1.2.3.4"), "request.ip_address", "invalid_field"),
    ("IPv6 uppercase", _set("request.ip_address", "2001:DB8::1"), "request.ip_address", "invalid_field"),
    ("IPv6 not compressed", _set("request.ip_address", "2001:0db8:0:0:0:0:0:1"), "request.ip_address", "invalid_field"),
    ("occurred_at before 2000", _occurred_at(946_684_799), "occurred_at", "invalid_field"),
    ("occurred_at at the epoch", _occurred_at(0), "occurred_at", "invalid_field"),
    ("occurred_at too far in the future", _occurred_at(NOW + 301), "occurred_at", "invalid_field"),
    ("occurred_at negative nanos", _occurred_at(NOW, -1), "occurred_at", "invalid_field"),
    ("occurred_at nanos overflow", _occurred_at(NOW, 1_000_000_000), "occurred_at", "invalid_field"),
    ("trace_id too short", _ids(TRACE_ID[:31], SPAN_ID), "trace_id", "invalid_field"),
    ("trace_id too long", _ids(TRACE_ID + "0", SPAN_ID), "trace_id", "invalid_field"),
    ("trace_id not hex", _ids("g" * 32, SPAN_ID), "trace_id", "invalid_field"),
    ("trace_id uppercase", _ids(TRACE_ID.upper(), SPAN_ID), "trace_id", "invalid_field"),
    ("trace_id all zero", _ids("0" * 32, SPAN_ID), "trace_id", "invalid_field"),
    ("span_id too short", _ids(TRACE_ID, SPAN_ID[:15]), "span_id", "invalid_field"),
    ("span_id all zero", _ids(TRACE_ID, "0" * 16), "span_id", "invalid_field"),
    ("trace_id without span_id", _ids(TRACE_ID, ""), "span_id", "missing_field"),
    ("span_id without trace_id", _ids("", SPAN_ID), "trace_id", "missing_field"),
    ("message too long", _set("message", "m" * (16 * 1024 + 1)), "message", "invalid_field"),
    ("actor.id too long", _set("actor.id", "i" * 1025), "actor.id", "invalid_field"),
    ("request.route too long", _set("request.route", "/" * 1025), "request.route", "invalid_field"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [pytest.param(mutate, field, reason, id=case) for case, mutate, field, reason in REFUSED],
)
def test_rule_is_refused_with_field_and_reason(mutate: Mutation, field: str, reason: str) -> None:
    event = valid_event()
    mutate(event)
    with pytest.raises(InvalidEventError) as caught:
        check(event)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert caught.value.detail
    assert str(caught.value).startswith(f"{field}: ")


ACCEPTED: list[tuple[str, Mutation]] = [
    ("tenant of 63 characters", _set("tenant", "a" + "b-_9" * 15 + "cd")),
    ("tenant with digits, dash and underscore", _set("tenant", "0acme_corp-1")),
    ("action with every allowed punctuation", _set("action", "Deploy_v2.app:create/x-y")),
    ("action of 128 characters", _set("action", "A" * 128)),
    ("every outcome", _set("outcome", event_pb2.OUTCOME_FAILURE)),
    ("actor type SYSTEM", _set("actor.type", event_pb2.SUBJECT_TYPE_SYSTEM)),
    ("actor type unspecified", _set("actor.type", event_pb2.SUBJECT_TYPE_UNSPECIFIED)),
    ("canonical IPv6", _set("request.ip_address", "2001:db8::1")),
    ("canonical IPv4-mapped IPv6", _set("request.ip_address", "::ffff:102:304")),
    ("no IP address", _set("request.ip_address", "")),
    ("metadata objects nested 32 deep", _metadata(nested_struct(32))),
    ("metadata lists nested 31 deep", _metadata({"list": nested_list(31)})),
    ("finite extreme numbers", _metadata({"big": 1.7976931348623157e308, "tiny": 5e-324, "neg": -0.0})),
    ("occurred_at on 2000-01-01", _occurred_at(946_684_800)),
    ("occurred_at at the clock skew limit", _occurred_at(NOW + 300)),
    ("occurred_at with the largest nanos", _occurred_at(NOW, 999_999_999)),
    ("no trace ids", _ids("", "")),
    ("message at the limit", _set("message", "m" * (16 * 1024))),
    ("actor.id at the limit", _set("actor.id", "i" * 1024)),
    ("actor.id at the limit in 4-byte characters", _set("actor.id", "\U0001f600" * 256)),
    ("resource.id at the limit in 3-byte characters", _set("resource.id", "\u4e2d" * 341 + "x")),
    ("resource.type and id at the limit in 2-byte characters", _set("resource.type", "\u0436" * 512)),
    ("resource without an id", _set("resource.id", "")),
    ("resource and parent without a type", _no_resource_types),
    *((f"resource.{field} alone", _resource(field)) for field in ("id", "name", "fqn")),
    *((f"parent_resource.{field} alone", _resource(field, parent=True)) for field in ("id", "name", "fqn")),
    ("resource.type alone", _resource("type")),
]


@pytest.mark.parametrize("mutate", [pytest.param(mutate, id=case) for case, mutate in ACCEPTED])
def test_boundary_values_are_accepted(mutate: Mutation) -> None:
    event = valid_event()
    mutate(event)
    check(event)


def test_resource_without_anything_needs_no_type() -> None:
    event = valid_event()
    event.ClearField("resource")
    event.ClearField("parent_resource")
    check(event)


def test_limits_are_configurable() -> None:
    event = valid_event()
    event.actor.id = "abcdef"
    event.message = "twelve chars"
    with pytest.raises(InvalidEventError) as caught:
        check(event, Limits(max_text_bytes=5))
    assert caught.value.field == "actor.id"
    with pytest.raises(InvalidEventError) as caught:
        check(valid_event(), Limits(max_message_chars=5))
    assert caught.value.field == "message"
    with pytest.raises(InvalidEventError) as caught:
        check(valid_event(), Limits(max_struct_depth=1))
    assert caught.value.field == "metadata"

    future = valid_event()
    future.occurred_at.FromSeconds(int(NOW) + 1000)
    check(future, Limits(max_clock_skew_seconds=1000))
    with pytest.raises(InvalidEventError) as caught:
        check(future, Limits(max_clock_skew_seconds=999))
    assert caught.value.field == "occurred_at"


def test_future_check_uses_the_given_clock() -> None:
    event = valid_event()
    event.occurred_at.FromSeconds(int(NOW) + 3600)
    with pytest.raises(InvalidEventError):
        validate_event(event, now_seconds=NOW)
    validate_event(event, now_seconds=NOW + 3600)


def test_clear_service_fields_discards_only_service_fields() -> None:
    event = valid_event()
    event.position = 42
    event.recorded_at.FromSeconds(int(NOW))
    event.hash = "ab" * 32
    event.prev_hash = "cd" * 32
    event.stream_revision = 7
    expected = valid_event()

    clear_service_fields(event)

    assert SERVICE_FIELDS == ("position", "recorded_at", "hash", "prev_hash", "stream_revision")
    assert event.position == 0
    assert event.stream_revision == 0
    assert not event.HasField("recorded_at")
    assert event.hash == ""
    assert event.prev_hash == ""
    assert event == expected
