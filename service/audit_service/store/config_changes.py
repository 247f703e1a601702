"""The service's own configuration changes (alert rules, destinations) as audit events of the log.

Each change appends one event through LogAppender (so positions, hash chains, resource streams, counts and
de-duplication stay right) in the caller's transaction, which then writes the read model: the resource's stream in
audit_resource_heads holds the same state, which is what the read models are rebuilt from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from audit.v1 import event_pb2
from audit_client import new_event_id
from audit_client.validation import validate_event

from ..core.records import Content, content_from_event
from ..errors import AbortedError, InvalidArgumentError
from .append import AppendResult, LogAppender


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, as the event's actor."""

    id: str
    type: int = event_pb2.SUBJECT_TYPE_USER


def change_event(
    *,
    action: str,
    resource_type: str,
    tenant: str,
    resource_id: str,
    name: str,
    actor: Actor,
    before: dict | None,
    after: dict | None,
    message: str,
    metadata: dict | None = None,
) -> Content:
    """The log content recording one change of a configuration resource (before and after as JSON; neither for
    an action that leaves its state as it is, e.g. a replay, described by metadata)."""
    event = event_pb2.AuditEvent(
        event_id=new_event_id(),
        tenant=tenant,
        action=action,
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id=actor.id, type=actor.type),
        resource=event_pb2.Resource(type=resource_type, id=resource_id, name=name[:200]),
        message=message,
    )
    event.occurred_at.GetCurrentTime()
    if before is not None:
        event.change.before.update(before)
    if after is not None:
        event.change.after.update(after)
    if metadata is not None:
        event.metadata.update(metadata)
    return content_from_event(event, validate_event(event, now_seconds=time.time()))


async def append_change(conn: asyncpg.Connection, appender: LogAppender, content: Content) -> AppendResult:
    """Appends the change's event (in the caller's transaction: the read model is written after it)."""
    result = await appender.append(conn, [content])
    if result.appended != 1:
        raise RuntimeError(f"the change event {content[0]} was not appended: {result}")
    return result


def check_revision(what: str, current_revision: int, expected: int, field: str) -> None:
    """Optimistic concurrency of a change: `expected` is the revision the caller last saw (0: no check).

    Raises:
        InvalidArgumentError: naming `field`, when it is negative.
        AbortedError: `what` (e.g. "alert rule <id>") is at another revision: somebody changed it meanwhile.
    """
    if expected < 0:
        raise InvalidArgumentError(field, f"must not be negative, got {expected}")
    if expected and expected != current_revision:
        raise AbortedError(
            f"{what} is at revision {current_revision}, not {expected}: somebody changed it; get it again and retry"
        )
