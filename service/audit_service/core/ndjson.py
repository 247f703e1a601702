"""The NDJSON form of stored events, shared by ExportEvents and the retention archives. Pure.

Each line is one AuditEvent in protobuf's canonical JSON mapping (camelCase names, int64 as strings, enums by
name, RFC 3339 timestamps), with every field the service set: position, recordedAt, hash, prevHash and
streamRevision. Any protobuf library can read it back, and a line holds everything its chain hash covers, so
the chain can be verified from the file alone (core/chain.py via `sealed_from_line`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from audit.v1 import event_pb2
from google.protobuf import json_format

from .records import canonical_bytes, content_from_event, timestamp_micros
from .stored_event import Row, row_to_event


def event_json(event: event_pb2.AuditEvent) -> dict:
    """An event in protobuf's canonical JSON mapping, as a dict (what every JSON form of an event is made of)."""
    return json_format.MessageToDict(event)


def event_line(row: Row) -> bytes:
    """One stored row as an NDJSON line (with its newline)."""
    return orjson.dumps(event_json(row_to_event(row))) + b"\n"


@dataclass(frozen=True, slots=True)
class SealedLine:
    """What the chain needs of one line: the event's tenant and position, and the bytes its hash covers."""

    tenant: str
    position: int
    canonical: bytes
    prev_hash: bytes
    hash: bytes


def sealed_from_line(line: bytes | str) -> SealedLine:
    """Reads one NDJSON line back; raises ValueError when it is not a stored AuditEvent."""
    try:
        event = json_format.ParseDict(orjson.loads(line), event_pb2.AuditEvent())
        prev_hash = bytes.fromhex(event.prev_hash)
        hash_ = bytes.fromhex(event.hash)
    except (orjson.JSONDecodeError, json_format.ParseError, ValueError) as error:
        raise ValueError(f"not an NDJSON audit event: {error}") from None
    if event.position <= 0 or len(hash_) != 32 or len(prev_hash) != 32:
        raise ValueError("not a stored audit event: position, hash or prevHash is missing")
    recorded_at = timestamp_micros(event.recorded_at.seconds, event.recorded_at.nanos)
    canonical = canonical_bytes(event.position, recorded_at, content_from_event(event), event.stream_revision or None)
    return SealedLine(event.tenant, event.position, canonical, prev_hash, hash_)
