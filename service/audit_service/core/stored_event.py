"""Rows of the log as AuditEvent messages, as ListEvents, TailEvents and the commit announcements carry them.
Pure: a row is any mapping of LOG_COLUMNS (an asyncpg.Record, or a row the appender has just sealed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from audit.v1 import event_pb2

from .records import LOG_COLUMNS, datetime_to_micros, row_from_canonical

Row = Mapping[str, Any]


def set_timestamp(target: Any, micros: int) -> None:
    seconds, remainder = divmod(micros, 1_000_000)
    target.seconds = seconds
    target.nanos = remainder * 1000


def _resource(row: Row, prefix: str) -> event_pb2.Resource | None:
    """The resource, or None when the event has none (so the field stays unset)."""
    values = [row[f"{prefix}_{name}"] for name in ("type", "id", "name", "fqn")]
    if not any(values):
        return None
    kind, id_, name, fqn = (value or "" for value in values)
    return event_pb2.Resource(type=kind, id=id_, name=name, fqn=fqn)


def _request(row: Row) -> event_pb2.RequestContext | None:
    values = [row[column] for column in ("request_route", "request_method", "ip_address", "user_agent")]
    if not any(values):
        return None
    route, method, ip_address, user_agent = (value or "" for value in values)
    return event_pb2.RequestContext(route=route, method=method, ip_address=ip_address, user_agent=user_agent)


def row_to_event(row: Row) -> event_pb2.AuditEvent:
    """The stored event as an AuditEvent, with the service-set fields filled."""
    event = event_pb2.AuditEvent(
        event_id=str(row["event_id"]),
        tenant=row["tenant"],
        action=row["action"],
        outcome=row["outcome"],
        actor=event_pb2.Subject(
            id=row["actor_id"] or "",
            type=row["actor_type"],
            slug=row["actor_slug"] or "",
            display_name=row["actor_display_name"] or "",
            email=row["actor_email"] or "",
            pat_name=row["actor_pat_name"] or "",
            controller_name=row["actor_controller_name"] or "",
            external_identity_slug=row["actor_external_identity_slug"] or "",
        ),
        resource=_resource(row, "resource"),
        parent_resource=_resource(row, "parent_resource"),
        request=_request(row),
        cluster_id=row["cluster_id"] or "",
        workspace_id=row["workspace_id"] or "",
        message=row["message"] or "",
        trace_id=row["trace_id"] or "",
        span_id=row["span_id"] or "",
        position=row["position"],
        hash=bytes(row["hash"]).hex(),
        prev_hash=bytes(row["prev_hash"]).hex(),
        stream_revision=row["stream_revision"] or 0,
    )
    if row["metadata"] is not None:
        event.metadata.update(json.loads(row["metadata"]))
    if row["change_before"] is not None:
        event.change.before.update(json.loads(row["change_before"]))
    if row["change_after"] is not None:
        event.change.after.update(json.loads(row["change_after"]))
    set_timestamp(event.occurred_at, datetime_to_micros(row["occurred_at"]))
    set_timestamp(event.recorded_at, datetime_to_micros(row["recorded_at"]))
    return event


def event_from_canonical(canonical: bytes, prev_hash: bytes, hash_: bytes) -> event_pb2.AuditEvent:
    """The stored event rebuilt from a commit announcement: equal to what row_to_event gives for its row."""
    return row_to_event(dict(zip(LOG_COLUMNS, row_from_canonical(canonical, prev_hash, hash_), strict=True)))
