r"""The line formats of ExportEvents, built from stored rows (any mapping of LOG_COLUMNS). Pure.

CSV (RFC 4180: comma-separated, fields quoted only when they hold a comma, quote, CR or LF, quotes doubled,
lines end with CRLF), one line per event under this header:

    time,action,outcome,actor,actor_type,resource_type,resource_name,resource_id,route,ip_address,user_agent,message,trace_id

  * time: occurred_at in UTC, ISO 8601 with microseconds and Z (2026-11-24T10:00:00.000000Z);
  * outcome and actor_type: the enum name without its prefix (SUCCESS, FAILURE, DENIED; USER, SYSTEM, ...;
    actor_type is empty when unspecified);
  * actor: the actor's slug, else its email, else its id, else its display name (the first one set);
  * empty and absent values are empty fields.

Log lines (logfmt), one per event:

    time=2026-11-24T10:00:00.000000Z level=info msg="rotated key" tenant=acme action=api_key.rotate outcome=SUCCESS
    actor=alice actorType=USER resourceType=api_key resourceId=key-1 resourceName=ci-key route=/api/v1/keys
    method=POST ip=10.1.2.3 userAgent="cli/1.0 (linux)" event_id=0193... position=42 trace_id=4bf9... span_id=00f0...

  (on one line). Keys always come in that order. time (occurred_at, as in CSV), level, msg, tenant, action,
  outcome, event_id and position are always written; any other key is left out when the event has no value
  for it. level is info for SUCCESS and warn for FAILURE and DENIED. A value is written bare unless it is
  empty or holds whitespace, '=', '"', a backslash or a control character; then it is quoted, with \\ \" \n \r
  \t escaped and any other control or line-separator character as \u00XX (\u2028), so every event stays on one
  line.

NDJSON is core/ndjson.event_line.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from audit.v1 import event_pb2

Row = Mapping[str, Any]

CSV_COLUMNS: tuple[str, ...] = (
    "time",
    "action",
    "outcome",
    "actor",
    "actor_type",
    "resource_type",
    "resource_name",
    "resource_id",
    "route",
    "ip_address",
    "user_agent",
    "message",
    "trace_id",
)
"""The CSV header, in column order."""

_OUTCOMES = {number: event_pb2.Outcome.Name(number).removeprefix("OUTCOME_") for number in event_pb2.Outcome.values()}
_SUBJECT_TYPES = {
    number: event_pb2.SubjectType.Name(number).removeprefix("SUBJECT_TYPE_")
    for number in event_pb2.SubjectType.values()
}
_WARN_OUTCOMES = frozenset({event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED})


class _ReturnLine:
    """A "file" whose write returns the line: csv.writer.writerow returns what write returns."""

    @staticmethod
    def write(line: str) -> str:
        return line


_csv_writer = csv.writer(_ReturnLine())


def utc_iso(value: dt.datetime) -> str:
    """A timestamp in UTC as ISO 8601 / RFC 3339 with microseconds and Z: 2026-11-24T10:00:00.000000Z."""
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def outcome_name(number: int) -> str:
    return _OUTCOMES.get(number) or str(number)


def subject_type_name(number: int) -> str:
    """USER, SYSTEM, ...; empty when unspecified."""
    return "" if not number else _SUBJECT_TYPES.get(number) or str(number)


def actor_of(row: Row) -> str:
    """The actor as one value: slug, else email, else id, else display name."""
    return row["actor_slug"] or row["actor_email"] or row["actor_id"] or row["actor_display_name"] or ""


def csv_fields(row: Row) -> list[str]:
    """One event's CSV fields, in CSV_COLUMNS order."""
    return [
        utc_iso(row["occurred_at"]),
        row["action"],
        outcome_name(row["outcome"]),
        actor_of(row),
        subject_type_name(row["actor_type"]),
        row["resource_type"] or "",
        row["resource_name"] or "",
        row["resource_id"] or "",
        row["request_route"] or "",
        row["ip_address"] or "",
        row["user_agent"] or "",
        row["message"] or "",
        row["trace_id"] or "",
    ]


def csv_header() -> bytes:
    """The header line (with its CRLF)."""
    return _csv_writer.writerow(CSV_COLUMNS).encode()


def csv_line(row: Row) -> bytes:
    """One event as a CSV line (with its CRLF; a field may span lines inside its quotes)."""
    return _csv_writer.writerow(csv_fields(row)).encode()


_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES.update(
    {code: f"\\u{code:04x}" for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029) if code not in _ESCAPES}
)


def logfmt_value(value: str) -> str:
    """A value as logfmt writes it: bare, or quoted with escapes when it must be."""
    if value and _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.translate(_ESCAPES) + '"'


def log_line(row: Row) -> bytes:
    """One event as a logfmt line (with its LF)."""
    outcome = row["outcome"]
    parts = [
        f"time={utc_iso(row['occurred_at'])}",
        "level=warn" if outcome in _WARN_OUTCOMES else "level=info",
        f"msg={logfmt_value(row['message'] or '')}",
        f"tenant={logfmt_value(row['tenant'])}",
        f"action={logfmt_value(row['action'])}",
        f"outcome={outcome_name(outcome)}",
    ]
    optional = (
        ("actor", actor_of(row)),
        ("actorType", subject_type_name(row["actor_type"])),
        ("resourceType", row["resource_type"]),
        ("resourceId", row["resource_id"]),
        ("resourceName", row["resource_name"]),
        ("route", row["request_route"]),
        ("method", row["request_method"]),
        ("ip", row["ip_address"]),
        ("userAgent", row["user_agent"]),
    )
    parts.extend(f"{key}={logfmt_value(value)}" for key, value in optional if value)
    parts.append(f"event_id={row['event_id']}")
    parts.append(f"position={row['position']}")
    for key in ("trace_id", "span_id"):
        if value := row[key]:
            parts.append(f"{key}={logfmt_value(value)}")
    return (" ".join(parts) + "\n").encode()
