"""Turns the bytes and headers of a NATS message into a validated AuditEvent, or says why not."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

from audit.v1 import event_pb2
from audit_client.errors import EventTooLargeError, InvalidEventError
from audit_client.validation import Limits, StructValues, clear_service_fields, validate_event
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from .masking import DEFAULT_MASK, SecretMask
from .records import Content, content_from_event
from .reserved import reserved_field
from .tracecontext import parse_traceparent

JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPES = frozenset({"", "application/x-protobuf", "application/protobuf"})


def _media_type(headers: Mapping[str, str] | None) -> str:
    if not headers:
        return ""
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _parse(data: bytes, media_type: str) -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent()
    if media_type == JSON_CONTENT_TYPE:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidEventError("", "invalid_json", f"payload is not JSON: {error}") from None
        except RecursionError:
            raise InvalidEventError("", "invalid_json", "payload is nested too deeply") from None
        if not isinstance(document, dict):
            raise InvalidEventError("", "schema_mismatch", "payload must be a JSON object")
        try:
            json_format.ParseDict(document, event)
        except (json_format.ParseError, OverflowError, ValueError, TypeError, RecursionError, SystemError) as error:
            # ParseError for most mismatches; the others escape protobuf for e.g. an enum given as 1e400, and
            # SystemError for a field name holding a lone surrogate (upb fails to look it up).
            raise InvalidEventError("", "schema_mismatch", str(error)[:500] or type(error).__name__) from None
        return event
    if media_type not in PROTOBUF_CONTENT_TYPES:
        raise InvalidEventError(
            "", "unsupported_content_type", f"Content-Type {media_type!r}: use application/x-protobuf or json"
        )
    try:
        event.ParseFromString(data)
    except DecodeError as error:
        raise InvalidEventError("", "invalid_protobuf", f"payload is not an audit.v1.AuditEvent: {error}") from None
    if len(UnknownFieldSet(event)):
        raise InvalidEventError(
            "", "invalid_protobuf", "payload has fields audit.v1.AuditEvent does not define (wrong message type?)"
        )
    return event


class DecodedEvent(NamedTuple):
    event: event_pb2.AuditEvent
    """The event as validated (service-owned fields cleared, trace ids completed)."""
    content: Content
    """Its canonical content, secrets masked, ready to be appended."""


def decode_event(
    data: bytes,
    headers: Mapping[str, str] | None,
    *,
    now_seconds: float,
    limits: Limits,
    mask: SecretMask = DEFAULT_MASK,
    subject_tenant: str | None = None,
) -> DecodedEvent:
    """Decodes and validates one published event, and masks its secret-looking values.

    Protobuf unless the Content-Type header says application/json. Service-owned fields are discarded;
    trace_id and span_id come from the W3C traceparent header when the event has none.

    Args:
        subject_tenant: the tenant named by the subject the event was published on (`<prefix>.events.<tenant>`);
            the event's own tenant must be the same. NATS permissions are granted per subject, so a producer
            allowed to publish for one tenant must not be able to write into another tenant's log.

    Raises:
        InvalidEventError: with a reason (too_large, invalid_json, schema_mismatch, invalid_protobuf,
            unsupported_content_type, missing_field, invalid_field, tenant_mismatch) and the field at fault.
    """
    if len(data) > limits.max_event_bytes:
        raise EventTooLargeError(len(data), limits.max_event_bytes)
    event = _parse(data, _media_type(headers))
    clear_service_fields(event)
    if not event.trace_id and not event.span_id and headers:
        parent = parse_traceparent(headers.get("traceparent"))
        if parent is not None:
            event.trace_id = parent.trace_id
            event.span_id = parent.span_id
    metadata, before, after = validate_event(event, now_seconds=now_seconds, limits=limits)
    if subject_tenant is not None and event.tenant != subject_tenant:
        raise InvalidEventError(
            "tenant",
            "tenant_mismatch",
            f"the event is for tenant {event.tenant!r} but was published on the subject of tenant "
            f"{subject_tenant[:80]!r}; publish it on the subject of its own tenant",
        )
    reserved = reserved_field(event.resource.type, event.action)
    if reserved is not None:
        raise InvalidEventError(
            reserved, "invalid_field", "is reserved for the service's own events (alert rule changes)"
        )
    structs = StructValues(mask.mask(metadata), mask.mask(before), mask.mask(after))
    return DecodedEvent(event, content_from_event(event, structs))
