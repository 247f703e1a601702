"""Builders of realistic audit events for tests."""

from __future__ import annotations

import itertools

from audit.v1 import event_pb2
from google.protobuf.message import Message

_counter = itertools.count(1)


def make_event(tenant: str = "acme", **overrides: object) -> event_pb2.AuditEvent:
    """A valid event (no event_id: the publisher fills it) with per-call distinct resource ids."""
    n = next(_counter)
    event = event_pb2.AuditEvent(
        tenant=tenant,
        action="api_key.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(
            id=f"user-{n % 7}",
            type=event_pb2.SUBJECT_TYPE_USER,
            slug="alice",
            display_name="Alice Example",
            email="alice@example.com",
        ),
        resource=event_pb2.Resource(type="api_key", id=f"key-{n}", name=f"ci-key-{n}", fqn=f"acme:ws-1:key-{n}"),
        parent_resource=event_pb2.Resource(type="workspace", id="ws-1", name="default"),
        request=event_pb2.RequestContext(
            route="/api/v1/api-keys", method="POST", ip_address="10.1.2.3", user_agent="pytest/1.0"
        ),
        cluster_id="cluster-a",
        workspace_id="ws-1",
        message=f"created API key ci-key-{n}",
    )
    event.metadata.update({"scopes": ["read", "write"], "ttl_days": 30, "rotated": False})
    event.change.after.update({"name": f"ci-key-{n}", "enabled": True})
    for name, value in overrides.items():
        if isinstance(value, Message):
            getattr(event, name).CopyFrom(value)
        else:
            setattr(event, name, value)
    return event


def stamp(event: event_pb2.AuditEvent) -> event_pb2.AuditEvent:
    """Fills event_id and occurred_at as the publisher would, for tests that append without NATS."""
    from audit_client import new_event_id

    if not event.event_id:
        event.event_id = new_event_id()
    if not event.HasField("occurred_at"):
        event.occurred_at.GetCurrentTime()
    return event


def content_of(event: event_pb2.AuditEvent):
    """The canonical content the worker would append for this (stamped) event."""
    import time

    from audit_client.validation import validate_event
    from audit_service.core.records import content_from_event

    return content_from_event(event, validate_event(event, now_seconds=time.time()))
