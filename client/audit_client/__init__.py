"""Audit log client: publish audit events to the audit log service, and tail the log.

Example:
    async with audit_client.connect("nats://127.0.0.1:4222") as publisher:
        await publisher.publish(AuditEvent(tenant="acme", action="api_key.create", ...))
        await publisher.publish_many(events)   # many acknowledgements in flight at once

    with audit_client.connect_sync("nats://127.0.0.1:4222") as publisher:   # from code that is not async
        publisher.publish(AuditEvent(tenant="acme", action="api_key.create", ...))

    async for event in audit_client.tail_events(channel, EventFilter(tenant="acme")):
        ...
"""

from audit.v1.audit_service_pb2 import EventFilter
from audit.v1.event_pb2 import (
    AuditEvent,
    Change,
    Outcome,
    RequestContext,
    Resource,
    Subject,
    SubjectType,
)

from .connection import tls_context
from .errors import AuditClientError, EventTooLargeError, InvalidEventError, PublishBatchError, PublishError
from .publisher import PublishAck, Publisher, connect, new_event_id
from .sync import SyncPublisher, connect_sync
from .tail import EventTail, tail_events
from .validation import Limits, validate_event

__all__ = [
    "AuditClientError",
    "AuditEvent",
    "Change",
    "EventFilter",
    "EventTail",
    "EventTooLargeError",
    "InvalidEventError",
    "Limits",
    "Outcome",
    "PublishAck",
    "PublishBatchError",
    "PublishError",
    "Publisher",
    "RequestContext",
    "Resource",
    "Subject",
    "SubjectType",
    "SyncPublisher",
    "connect",
    "connect_sync",
    "new_event_id",
    "tail_events",
    "tls_context",
    "validate_event",
]
