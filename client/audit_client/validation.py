"""The contract of an audit event, as pure functions: what producers may send and what the service stores.

Shared by the publisher (which refuses bad events before sending them) and by the ingest worker (which
dead-letters them), so both sides enforce the same rules.
"""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
from dataclasses import dataclass

from audit.v1 import event_pb2
from google.protobuf import struct_pb2

from .errors import InvalidEventError

TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ACTION_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.:/-]{0,127}")
TRACE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SPAN_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_MIN_OCCURRED_AT_SECONDS = 946_684_800  # 2000-01-01T00:00:00Z: anything older is a clock or encoding bug

_OUTCOMES = frozenset(event_pb2.Outcome.values()) - {event_pb2.OUTCOME_UNSPECIFIED}
_SUBJECT_TYPES = frozenset(event_pb2.SubjectType.values())


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits of an event."""

    max_event_bytes: int = 256 * 1024
    """Largest encoded event (protobuf or JSON) accepted."""
    max_text_chars: int = 1024
    """Longest value of a short text field (ids, names, slugs, route, user agent...)."""
    max_message_chars: int = 16 * 1024
    """Longest human-readable message."""
    max_struct_depth: int = 32
    """Deepest nesting of metadata, change.before and change.after."""
    max_clock_skew_seconds: int = 300
    """How far in the future (by the validator's clock) occurred_at may be."""


DEFAULT_LIMITS = Limits()


def _check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidEventError(field, "invalid_field", f"longer than {limit} characters")
    if "\x00" in value:
        raise InvalidEventError(field, "invalid_field", "contains a NUL character")


def _check_value(value: struct_pb2.Value, field: str, depth: int, limits: Limits) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidEventError(field, "invalid_field", "numbers must be finite")
    elif kind == "string_value":
        if "\x00" in value.string_value:
            raise InvalidEventError(field, "invalid_field", "contains a NUL character")
    elif kind == "struct_value":
        _check_struct(value.struct_value, field, depth + 1, limits)
    elif kind == "list_value":
        if depth + 1 > limits.max_struct_depth:
            raise InvalidEventError(field, "invalid_field", f"nested deeper than {limits.max_struct_depth}")
        for item in value.list_value.values:
            _check_value(item, field, depth + 1, limits)
    elif kind is None:
        raise InvalidEventError(field, "invalid_field", "a value has no kind set")


def _check_struct(struct: struct_pb2.Struct, field: str, depth: int, limits: Limits) -> None:
    if depth > limits.max_struct_depth:
        raise InvalidEventError(field, "invalid_field", f"nested deeper than {limits.max_struct_depth}")
    for key, value in struct.fields.items():
        if "\x00" in key:
            raise InvalidEventError(field, "invalid_field", "a key contains a NUL character")
        _check_value(value, field, depth, limits)


def _check_trace_id(value: str, field: str, pattern: re.Pattern[str], zero: str) -> None:
    if value and (not pattern.fullmatch(value) or value == zero):
        raise InvalidEventError(
            field, "invalid_field", f"must be {len(zero)} lowercase hex digits, not all zero, got {value!r}"
        )


def validate_event(event: event_pb2.AuditEvent, *, now_seconds: float, limits: Limits = DEFAULT_LIMITS) -> None:
    """Checks an event against the contract.

    Args:
        event: the event as a producer sends it.
        now_seconds: the validator's clock (Unix seconds), to reject events from the future.
        limits: size and time limits.

    Raises:
        InvalidEventError: naming the first offending field.
    """
    if not event.event_id:
        raise InvalidEventError("event_id", "missing_field", "is required")
    try:
        parsed_id = uuid.UUID(event.event_id)
    except ValueError:
        raise InvalidEventError("event_id", "invalid_field", f"is not a UUID: {event.event_id[:64]!r}") from None
    if str(parsed_id) != event.event_id:
        raise InvalidEventError("event_id", "invalid_field", "must be a UUID in lowercase hyphenated form")
    if not event.tenant:
        raise InvalidEventError("tenant", "missing_field", "is required")
    if not TENANT_PATTERN.fullmatch(event.tenant):
        raise InvalidEventError(
            "tenant", "invalid_field", f"must match {TENANT_PATTERN.pattern}, got {event.tenant[:80]!r}"
        )
    if not event.action:
        raise InvalidEventError("action", "missing_field", "is required")
    if not ACTION_PATTERN.fullmatch(event.action):
        raise InvalidEventError(
            "action", "invalid_field", f"must match {ACTION_PATTERN.pattern}, got {event.action[:160]!r}"
        )
    if event.outcome not in _OUTCOMES:
        if event.outcome == event_pb2.OUTCOME_UNSPECIFIED:
            raise InvalidEventError("outcome", "missing_field", "is required")
        raise InvalidEventError("outcome", "invalid_field", f"unknown value {event.outcome}")

    actor = event.actor
    if not (actor.id or actor.slug):
        raise InvalidEventError("actor", "missing_field", "actor.id or actor.slug is required")
    if actor.type not in _SUBJECT_TYPES:
        raise InvalidEventError("actor.type", "invalid_field", f"unknown value {actor.type}")
    text_limit = limits.max_text_chars
    for name in (
        "id",
        "slug",
        "display_name",
        "email",
        "pat_name",
        "controller_name",
        "external_identity_slug",
    ):
        _check_text(getattr(actor, name), f"actor.{name}", text_limit)
    for prefix, resource in (("resource", event.resource), ("parent_resource", event.parent_resource)):
        for name in ("type", "id", "name", "fqn"):
            _check_text(getattr(resource, name), f"{prefix}.{name}", text_limit)
        if (resource.id or resource.name or resource.fqn) and not resource.type:
            raise InvalidEventError(f"{prefix}.type", "missing_field", f"is required when {prefix} is set")
    request = event.request
    for name in ("route", "method", "ip_address", "user_agent"):
        _check_text(getattr(request, name), f"request.{name}", text_limit)
    if request.ip_address:
        try:
            canonical_ip = str(ipaddress.ip_address(request.ip_address))
        except ValueError:
            raise InvalidEventError(
                "request.ip_address", "invalid_field", f"is not an IP address: {request.ip_address[:64]!r}"
            ) from None
        if canonical_ip != request.ip_address:
            raise InvalidEventError("request.ip_address", "invalid_field", f"write it as {canonical_ip!r}")
    _check_text(event.cluster_id, "cluster_id", text_limit)
    _check_text(event.workspace_id, "workspace_id", text_limit)
    _check_text(event.message, "message", limits.max_message_chars)
    _check_struct(event.metadata, "metadata", 1, limits)
    _check_struct(event.change.before, "change.before", 1, limits)
    _check_struct(event.change.after, "change.after", 1, limits)

    if not event.HasField("occurred_at"):
        raise InvalidEventError("occurred_at", "missing_field", "is required")
    occurred = event.occurred_at
    if not 0 <= occurred.nanos < 1_000_000_000:
        raise InvalidEventError("occurred_at", "invalid_field", "nanos out of range")
    if occurred.seconds < _MIN_OCCURRED_AT_SECONDS:
        raise InvalidEventError("occurred_at", "invalid_field", "is before the year 2000")
    if occurred.seconds > now_seconds + limits.max_clock_skew_seconds:
        raise InvalidEventError(
            "occurred_at",
            "invalid_field",
            f"is more than {limits.max_clock_skew_seconds} s in the future",
        )
    _check_trace_id(event.trace_id, "trace_id", TRACE_ID_PATTERN, _ZERO_TRACE_ID)
    _check_trace_id(event.span_id, "span_id", SPAN_ID_PATTERN, _ZERO_SPAN_ID)
    if bool(event.trace_id) != bool(event.span_id):
        raise InvalidEventError("span_id" if event.trace_id else "trace_id", "missing_field", "set both or none")


SERVICE_FIELDS = ("position", "recorded_at", "hash", "prev_hash")
"""Fields the service sets on stored events; whatever a producer puts there is discarded."""


def clear_service_fields(event: event_pb2.AuditEvent) -> None:
    """Discards the fields that only the service may set."""
    for name in SERVICE_FIELDS:
        event.ClearField(name)
