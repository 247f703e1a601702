"""The stored form of an event: one row of audit_events, its canonical encoding and its chain hash.

The canonical encoding is what the hash chain signs. It is a compact JSON array in a fixed column order
(UTF-8, no insignificant whitespace, as orjson writes it), built from the event's content so that the same
content gives the same bytes whether it comes from the producer's protobuf or is read back from PostgreSQL:
  * empty strings and NULL are both "", an empty Struct and NULL are both null;
  * timestamps are integer microseconds since the Unix epoch (PostgreSQL's precision);
  * every JSON number in a Struct is a float (protobuf Struct numbers are doubles; jsonb may print 1.0 as 1),
    written as its shortest round-trip form (1.0, 0.1, 1e16), -0.0 is 0.0;
  * object keys are sorted.
hash = SHA-256(prev_hash || canonical), prev_hash of a tenant's first event is 32 zero bytes.

An event of a resource stream (one with a resource id) also has a stream revision, set by the service. Its
encoding is version 2, with the revision last: ["audit.v1/2", position, recorded_at, *content, revision]. Events
without one keep version 1, so events stored before streams existed verify unchanged, and a revision added to,
removed from or changed on a stored event breaks its hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from audit.v1 import event_pb2
from audit_client.validation import (
    StructValues,
    request_texts,
    resource_texts,
    struct_to_python,
    subject_texts,
)

CANONICAL_VERSION = "audit.v1/1"
CANONICAL_VERSION_STREAM = "audit.v1/2"
_SORT_KEYS = orjson.OPT_SORT_KEYS
GENESIS_HASH = bytes(32)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

CONTENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "tenant",
    "action",
    "outcome",
    "actor_id",
    "actor_type",
    "actor_slug",
    "actor_display_name",
    "actor_email",
    "actor_pat_name",
    "actor_controller_name",
    "actor_external_identity_slug",
    "resource_type",
    "resource_id",
    "resource_name",
    "resource_fqn",
    "parent_resource_type",
    "parent_resource_id",
    "parent_resource_name",
    "parent_resource_fqn",
    "request_route",
    "request_method",
    "ip_address",
    "user_agent",
    "cluster_id",
    "workspace_id",
    "message",
    "metadata",
    "change_before",
    "change_after",
    "occurred_at",
    "trace_id",
    "span_id",
)
"""The event's content, in canonical order."""

LOG_COLUMNS: tuple[str, ...] = ("position", "recorded_at", *CONTENT_COLUMNS, "stream_revision", "prev_hash", "hash")
"""Columns of audit_events that make the stored event, in the order of the rows built here."""
STORED_COLUMNS: tuple[str, ...] = (*LOG_COLUMNS, "event_bytes")
"""What the appender writes: the event's columns, then the size of its canonical encoding (which sizes reads;
not part of the hashed content)."""

_STRUCT_COLUMNS = frozenset({"metadata", "change_before", "change_after"})
_INT_COLUMNS = frozenset({"outcome", "actor_type"})
_STRUCT_INDEXES = tuple(i for i, name in enumerate(CONTENT_COLUMNS) if name in _STRUCT_COLUMNS)
_TEXT_INDEXES = tuple(
    i
    for i, name in enumerate(CONTENT_COLUMNS)
    if name not in _STRUCT_COLUMNS and name not in _INT_COLUMNS and name not in ("event_id", "occurred_at")
)
_OCCURRED_AT_INDEX = CONTENT_COLUMNS.index("occurred_at")
CHANGE_BEFORE_INDEX = CONTENT_COLUMNS.index("change_before")
CHANGE_AFTER_INDEX = CONTENT_COLUMNS.index("change_after")
METADATA_INDEX = CONTENT_COLUMNS.index("metadata")

Content = tuple[Any, ...]
"""Values of CONTENT_COLUMNS in canonical form: str ("" for empty), int, dict | None, occurred_at in µs."""


def normalize_json(value: Any) -> Any:
    """Puts JSON read back from PostgreSQL into canonical form (ints become floats, as Struct had them)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value) + 0.0
    if isinstance(value, dict):
        return {key: normalize_json(item) for key, item in value.items()}
    return [normalize_json(item) for item in value]


def timestamp_micros(seconds: int, nanos: int) -> int:
    return seconds * 1_000_000 + nanos // 1000


def datetime_to_micros(value: dt.datetime) -> int:
    return (value - EPOCH) // _MICROSECOND


def micros_to_datetime(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


_head_content = operator.attrgetter("event_id", "tenant", "action", "outcome")
_tail_content = operator.attrgetter("cluster_id", "workspace_id", "message")
_trace_content = operator.attrgetter("trace_id", "span_id")


def content_from_event(event: event_pb2.AuditEvent, structs: StructValues | None = None) -> Content:
    """The canonical content of a validated event (occurred_at is truncated to microseconds).

    Args:
        event: the event, validated.
        structs: its Struct fields as plain Python, as returned by validate_event (converted here if None).
    """
    if structs is None:
        structs = StructValues(
            struct_to_python(event.metadata, "metadata"),
            struct_to_python(event.change.before, "change.before"),
            struct_to_python(event.change.after, "change.after"),
        )
    actor = event.actor
    occurred = event.occurred_at
    return (
        *_head_content(event),
        actor.id,
        actor.type,
        *subject_texts(actor)[1:],
        *resource_texts(event.resource),
        *resource_texts(event.parent_resource),
        *request_texts(event.request),
        *_tail_content(event),
        *structs,
        timestamp_micros(occurred.seconds, occurred.nanos),
        *_trace_content(event),
    )


def content_from_row(row: Mapping[str, Any]) -> Content:
    """The canonical content of a stored row (jsonb as text, timestamps as datetimes, NULLs)."""
    values: list[Any] = []
    for name in CONTENT_COLUMNS:
        value = row[name]
        if name in _STRUCT_COLUMNS:
            values.append(None if value is None else normalize_json(orjson.loads(value)))
        elif name in _INT_COLUMNS:
            values.append(int(value))
        elif name == "occurred_at":
            values.append(datetime_to_micros(value))
        else:
            values.append("" if value is None else str(value))
    return tuple(values)


def canonical_bytes(position: int, recorded_at_micros: int, content: Content, revision: int | None = None) -> bytes:
    """The bytes the hash chain covers for one event (with its stream revision, if it has one)."""
    if revision is None:
        return orjson.dumps([CANONICAL_VERSION, position, recorded_at_micros, *content], option=_SORT_KEYS)
    return orjson.dumps([CANONICAL_VERSION_STREAM, position, recorded_at_micros, *content, revision], option=_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class Presealed:
    """What sealing an event needs that does not depend on where it lands in the log, prepared before the
    append's serialized section (store/append.py): there only the position, recorded_at, the stream revision and
    the previous hash are spliced in."""

    content: Content
    canonical_content: bytes
    """The content's part of the canonical encoding: its JSON array without the brackets."""
    row_values: tuple[Any, ...]
    """The content as log columns (log_row without the position, recorded_at, revision and hashes)."""


_CANONICAL_PREFIX = orjson.dumps(CANONICAL_VERSION)
_CANONICAL_PREFIX_STREAM = orjson.dumps(CANONICAL_VERSION_STREAM)


def preseal(content: Content) -> Presealed:
    return Presealed(content, orjson.dumps(content, option=_SORT_KEYS)[1:-1], _row_values(content))


def seal_presealed(
    position: int,
    recorded_at: dt.datetime,
    recorded_at_micros: int,
    presealed: Presealed,
    prev_hash: bytes,
    revision: int | None = None,
) -> tuple[bytes, bytes, tuple[Any, ...]]:
    """seal_canonical() of a presealed event: the same canonical bytes (the JSON array written element by
    element, so the content's part can be written ahead) and hash, and its row of STORED_COLUMNS (the log's
    columns and the size of the canonical bytes)."""
    if revision is None:
        canonical = b"[%s,%d,%d,%s]" % (_CANONICAL_PREFIX, position, recorded_at_micros, presealed.canonical_content)
    else:
        canonical = b"[%s,%d,%d,%s,%d]" % (
            _CANONICAL_PREFIX_STREAM,
            position,
            recorded_at_micros,
            presealed.canonical_content,
            revision,
        )
    digest = hashlib.sha256(prev_hash + canonical).digest()
    row = (position, recorded_at, *presealed.row_values, revision, prev_hash, digest, len(canonical))
    return canonical, digest, row


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


def log_row(
    position: int,
    recorded_at: dt.datetime,
    content: Content,
    prev_hash: bytes,
    hash_: bytes,
    revision: int | None = None,
) -> tuple[Any, ...]:
    """A row of audit_events in LOG_COLUMNS order, with NULL for empty values, ready for COPY."""
    return (position, recorded_at, *_row_values(content), revision, prev_hash, hash_)


def _row_values(content: Content) -> tuple[Any, ...]:
    values: list[Any] = list(content)
    for index in _TEXT_INDEXES:
        if values[index] == "":
            values[index] = None
    for index in _STRUCT_INDEXES:
        if values[index] is not None:
            values[index] = orjson.dumps(values[index]).decode()
    values[_OCCURRED_AT_INDEX] = micros_to_datetime(values[_OCCURRED_AT_INDEX])
    return tuple(values)


def seal(
    position: int, recorded_at: dt.datetime, content: Content, prev_hash: bytes, revision: int | None = None
) -> tuple[bytes, tuple[Any, ...]]:
    """Hashes one event onto its tenant's chain; returns its hash and its row."""
    _, digest, row = seal_canonical(position, recorded_at, content, prev_hash, revision)
    return digest, row


def seal_canonical(
    position: int, recorded_at: dt.datetime, content: Content, prev_hash: bytes, revision: int | None = None
) -> tuple[bytes, bytes, tuple[Any, ...]]:
    """As seal(), also returning the canonical bytes the hash covers (the commit announcement carries them)."""
    canonical = canonical_bytes(position, datetime_to_micros(recorded_at), content, revision)
    digest = chain_hash(prev_hash, canonical)
    return canonical, digest, log_row(position, recorded_at, content, prev_hash, digest, revision)


def parse_canonical(canonical: bytes) -> tuple[int, int, Content, int | None]:
    """(position, recorded_at in µs, content, stream revision) of canonical bytes."""
    version, position, recorded_at_micros, *content = orjson.loads(canonical)
    if version == CANONICAL_VERSION:
        return position, recorded_at_micros, tuple(content), None
    if version == CANONICAL_VERSION_STREAM:
        return position, recorded_at_micros, tuple(content[:-1]), content[-1]
    raise ValueError(f"unknown canonical version {version!r}")


def row_canonical_bytes(row: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a stored row (what its hash should cover)."""
    return canonical_bytes(
        row["position"], datetime_to_micros(row["recorded_at"]), content_from_row(row), row["stream_revision"]
    )


def row_from_canonical(canonical: bytes, prev_hash: bytes, hash_: bytes) -> tuple[Any, ...]:
    """The log row of an event given its canonical bytes and hashes (the inverse of seal_canonical)."""
    position, recorded_at_micros, content, revision = parse_canonical(canonical)
    return log_row(position, micros_to_datetime(recorded_at_micros), content, prev_hash, hash_, revision)


def columns_sql(prefix: str = "", columns: Sequence[str] = LOG_COLUMNS) -> str:
    """Comma-separated column list for SQL, optionally qualified."""
    return ", ".join(f"{prefix}{name}" for name in columns)
