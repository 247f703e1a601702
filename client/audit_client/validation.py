"""The contract of an audit event, as pure functions: what producers may send and what the service stores.

Shared by the publisher (which refuses bad events before sending them) and by the ingest worker (which
dead-letters them), so both sides enforce the same rules.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import re
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

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
    max_text_bytes: int = 1024
    """Longest value of a short text field (ids, names, slugs, route, user agent...), in bytes of UTF-8: the
    database keeps these values in index entries, whose size is limited in bytes (three of them, tenant and
    resource type and id, share one entry), so 1,024 ASCII characters fit, or 256 four-byte ones."""
    max_message_chars: int = 16 * 1024
    """Longest human-readable message."""
    max_struct_depth: int = 32
    """Deepest nesting of metadata, change.before and change.after."""
    max_clock_skew_seconds: int = 300
    """How far in the future (by the validator's clock) occurred_at may be."""


DEFAULT_LIMITS = Limits()


_UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}")

_SUBJECT_TEXT = ("id", "slug", "display_name", "email", "pat_name", "controller_name", "external_identity_slug")
_RESOURCE_TEXT = ("type", "id", "name", "fqn")
_REQUEST_TEXT = ("route", "method", "ip_address", "user_agent")
subject_texts = operator.attrgetter(*_SUBJECT_TEXT)
resource_texts = operator.attrgetter(*_RESOURCE_TEXT)
request_texts = operator.attrgetter(*_REQUEST_TEXT)
_TEXT_FIELDS = (
    *(f"actor.{name}" for name in _SUBJECT_TEXT),
    *(f"resource.{name}" for name in _RESOURCE_TEXT),
    *(f"parent_resource.{name}" for name in _RESOURCE_TEXT),
    *(f"request.{name}" for name in _REQUEST_TEXT),
    "cluster_id",
    "workspace_id",
)
"""Short text fields, limited to Limits.max_text_bytes."""


def _text_values(event: event_pb2.AuditEvent) -> tuple[str, ...]:
    # One attribute lookup per sub-message: each `event.actor` builds a new wrapper object.
    return (
        *subject_texts(event.actor),
        *resource_texts(event.resource),
        *resource_texts(event.parent_resource),
        *request_texts(event.request),
        event.cluster_id,
        event.workspace_id,
    )


JsonValue = Any
"""A Struct value as plain Python: dict, list, str, float, bool or None."""


class StructValues(NamedTuple):
    """The Struct fields of a validated event as plain Python (None when empty); numbers are floats."""

    metadata: dict[str, JsonValue] | None
    change_before: dict[str, JsonValue] | None
    change_after: dict[str, JsonValue] | None


_UTF8_MAX_BYTES_PER_CHAR = 4


def _check_texts(event: event_pb2.AuditEvent, limit_bytes: int) -> None:
    values = _text_values(event)
    # The common case in two C calls: no value is long enough to exceed the limit even in 4-byte characters.
    if max(map(len, values)) * _UTF8_MAX_BYTES_PER_CHAR <= limit_bytes and "\x00" not in "".join(values):
        return
    for field, value in zip(_TEXT_FIELDS, values, strict=True):
        _check_text_bytes(value, field, limit_bytes)


def _check_text_bytes(value: str, field: str, limit_bytes: int) -> None:
    if len(value) * _UTF8_MAX_BYTES_PER_CHAR > limit_bytes and (size := len(value.encode())) > limit_bytes:
        raise InvalidEventError(field, "invalid_field", f"is {size} bytes of UTF-8, longer than {limit_bytes} bytes")
    if "\x00" in value:
        raise InvalidEventError(field, "invalid_field", "contains a NUL character")


def _check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidEventError(field, "invalid_field", f"longer than {limit} characters")
    if "\x00" in value:
        raise InvalidEventError(field, "invalid_field", "contains a NUL character")


def _value_to_python(value: struct_pb2.Value, field: str, depth: int, max_depth: int) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if "\x00" in text:
            raise InvalidEventError(field, "invalid_field", "contains a NUL character")
        return text
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidEventError(field, "invalid_field", "numbers must be finite")
        return number + 0.0  # folds -0.0 into 0.0, which jsonb cannot keep apart
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        return _struct_to_python(value.struct_value, field, depth + 1, max_depth)
    if kind == "list_value":
        if depth + 1 > max_depth:
            raise InvalidEventError(field, "invalid_field", f"nested deeper than {max_depth}")
        return [_value_to_python(item, field, depth + 1, max_depth) for item in value.list_value.values]
    raise InvalidEventError(field, "invalid_field", "a value has no kind set")


def _struct_to_python(struct: struct_pb2.Struct, field: str, depth: int, max_depth: int) -> dict[str, JsonValue]:
    if depth > max_depth:
        raise InvalidEventError(field, "invalid_field", f"nested deeper than {max_depth}")
    fields = struct.fields
    keys = list(fields)  # the map's own iterator; .items() would go through a slow Python generator
    if "\x00" in "".join(keys):
        raise InvalidEventError(field, "invalid_field", "a key contains a NUL character")
    return {key: _value_to_python(fields[key], field, depth, max_depth) for key in keys}


def struct_to_python(struct: struct_pb2.Struct, field: str = "", limits: Limits = DEFAULT_LIMITS) -> dict | None:
    """Checks a Struct (no NUL characters, finite numbers, bounded depth) and converts it to plain Python.

    An empty Struct is None. Raises InvalidEventError naming `field`.
    """
    if not struct.fields:
        return None
    return _struct_to_python(struct, field, 1, limits.max_struct_depth)


def _check_trace_id(value: str, field: str, pattern: re.Pattern[str], zero: str) -> None:
    if value and (not pattern.fullmatch(value) or value == zero):
        raise InvalidEventError(
            field, "invalid_field", f"must be {len(zero)} lowercase hex digits, not all zero, got {value!r}"
        )


def _check_event_id(event_id: str) -> None:
    if _UUID_PATTERN.fullmatch(event_id):
        return
    if not event_id:
        raise InvalidEventError("event_id", "missing_field", "is required")
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise InvalidEventError("event_id", "invalid_field", f"is not a UUID: {event_id[:64]!r}") from None
    raise InvalidEventError("event_id", "invalid_field", "must be a UUID in lowercase hyphenated form")


def _check_ip_address(ip_address: str) -> None:
    if not ip_address or _CANONICAL_IPV4.fullmatch(ip_address):
        return
    try:
        canonical_ip = str(ipaddress.ip_address(ip_address))
    except ValueError:
        raise InvalidEventError(
            "request.ip_address", "invalid_field", f"is not an IP address: {ip_address[:64]!r}"
        ) from None
    if canonical_ip != ip_address:
        raise InvalidEventError("request.ip_address", "invalid_field", f"write it as {canonical_ip!r}")


def validate_event(event: event_pb2.AuditEvent, *, now_seconds: float, limits: Limits = DEFAULT_LIMITS) -> StructValues:
    """Checks an event against the contract.

    Args:
        event: the event as a producer sends it.
        now_seconds: the validator's clock (Unix seconds), to reject events from the future.
        limits: size and time limits.

    Returns:
        The event's Struct fields converted to plain Python, as checked.

    Raises:
        InvalidEventError: naming the first offending field.
    """
    _check_event_id(event.event_id)
    tenant = event.tenant
    if not tenant:
        raise InvalidEventError("tenant", "missing_field", "is required")
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidEventError("tenant", "invalid_field", f"must match {TENANT_PATTERN.pattern}, got {tenant[:80]!r}")
    action = event.action
    if not action:
        raise InvalidEventError("action", "missing_field", "is required")
    if not ACTION_PATTERN.fullmatch(action):
        raise InvalidEventError("action", "invalid_field", f"must match {ACTION_PATTERN.pattern}, got {action[:160]!r}")
    if event.outcome not in _OUTCOMES:
        if event.outcome == event_pb2.OUTCOME_UNSPECIFIED:
            raise InvalidEventError("outcome", "missing_field", "is required")
        raise InvalidEventError("outcome", "invalid_field", f"unknown value {event.outcome}")

    actor = event.actor
    if not (actor.id or actor.slug):
        raise InvalidEventError("actor", "missing_field", "actor.id or actor.slug is required")
    if actor.type not in _SUBJECT_TYPES:
        raise InvalidEventError("actor.type", "invalid_field", f"unknown value {actor.type}")
    # resource and parent_resource: every field is optional, the type too (such an event's stream has type "").
    _check_texts(event, limits.max_text_bytes)
    _check_ip_address(event.request.ip_address)
    _check_text(event.message, "message", limits.max_message_chars)
    structs = StructValues(
        struct_to_python(event.metadata, "metadata", limits),
        struct_to_python(event.change.before, "change.before", limits),
        struct_to_python(event.change.after, "change.after", limits),
    )

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
    return structs


SERVICE_FIELDS = ("position", "recorded_at", "hash", "prev_hash", "stream_revision")
"""Fields the service sets on stored events; whatever a producer puts there is discarded."""


def clear_service_fields(event: event_pb2.AuditEvent) -> None:
    """Discards the fields that only the service may set."""
    for name in SERVICE_FIELDS:
        event.ClearField(name)
