"""CSV and logfmt lines of ExportEvents: what any CSV reader or logfmt parser reads back is the event's values."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

import pytest
from audit.v1 import event_pb2
from audit_service.core.export_formats import CSV_COLUMNS, csv_header, csv_line, log_line, logfmt_value, utc_iso
from audit_service.core.records import GENESIS_HASH, LOG_COLUMNS, seal

from ..factories import content_of, make_event, stamp

RECORDED_AT = dt.datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=dt.UTC)
NASTY = [
    "plain",
    "with space",
    "comma, and more",
    'a "quoted" word',
    "line one\nline two\r\nline three",
    "tab\there",
    "key=value",
    "back\\slash",
    "trailing space ",
    " leading",
    "ünïcödé ✓ 日本語 🎉",
    "esc\x1bbell\x07del\x7fnel\x85",
    "line\u2028separator",
    "",
]


def row_of(event: event_pb2.AuditEvent, position: int = 42) -> dict[str, Any]:
    _, row = seal(position, RECORDED_AT, content_of(stamp(event)), GENESIS_HASH)
    return dict(zip(LOG_COLUMNS, row, strict=True))


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt parser: bare values without whitespace, quotes, '=' or backslashes; quoted values with
    only the escapes \\\\ \\" \\n \\r \\t \\uXXXX; single spaces between pairs; no repeated key."""
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    pairs: dict[str, str] = {}
    pattern = re.compile(r'([A-Za-z_]+)=(?:"((?:[^"\\\x00-\x1f]|\\(?:[\\"nrt]|u[0-9a-f]{4}))*)"|([^\s"=\\]+))( |\n$)')
    at = 0
    while at < len(line):
        match = pattern.match(line, at)
        assert match is not None, f"not logfmt at {at}: {line[at:]!r}"
        key, quoted, bare = match.group(1), match.group(2), match.group(3)
        assert key not in pairs, f"repeated key {key}"
        if quoted is None:
            pairs[key] = bare
        else:
            pairs[key] = re.sub(
                r'\\(?:([\\"])|([nrt])|u([0-9a-f]{4}))',
                lambda m: m.group(1) or {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(2)) or chr(int(m.group(3), 16)),
                quoted,
            )
        at = match.end()
    return pairs


def test_the_header_names_the_documented_columns() -> None:
    assert csv_header() == (
        b"time,action,outcome,actor,actor_type,resource_type,resource_name,resource_id,route,ip_address,"
        b"user_agent,message,trace_id\r\n"
    )
    assert read_csv(csv_header()) == [list(CSV_COLUMNS)]


def test_a_csv_line_holds_the_events_values() -> None:
    event = make_event(
        "acme", action="api_key.rotate", outcome=event_pb2.OUTCOME_DENIED, trace_id="ab" * 16, span_id="cd" * 8
    )
    event.occurred_at.FromDatetime(dt.datetime(2026, 1, 2, 3, 4, 5, 678901))
    row = row_of(event)
    [fields] = read_csv(csv_line(row))
    assert dict(zip(CSV_COLUMNS, fields, strict=True)) == {
        "time": "2026-01-02T03:04:05.678901Z",
        "action": "api_key.rotate",
        "outcome": "DENIED",
        "actor": "alice",
        "actor_type": "USER",
        "resource_type": "api_key",
        "resource_name": event.resource.name,
        "resource_id": event.resource.id,
        "route": "/api/v1/api-keys",
        "ip_address": "10.1.2.3",
        "user_agent": "pytest/1.0",
        "message": event.message,
        "trace_id": "ab" * 16,
    }


@pytest.mark.parametrize("text", NASTY)
def test_csv_fields_with_commas_quotes_newlines_and_unicode_read_back_unchanged(text: str) -> None:
    event = make_event("acme", message=text, request=event_pb2.RequestContext(user_agent=text))
    event.resource.name = text
    lines = b"".join([csv_header(), csv_line(row_of(event, 1)), csv_line(row_of(make_event("acme"), 2))])
    rows = read_csv(lines)
    assert len(rows) == 3 and all(len(fields) == len(CSV_COLUMNS) for fields in rows)
    fields = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert (fields["message"], fields["user_agent"], fields["resource_name"]) == (text, text, text)
    assert fields["route"] == fields["ip_address"] == ""


def test_the_actor_is_the_slug_else_the_email_else_the_id() -> None:
    def actor(**subject: Any) -> str:
        event = make_event("acme", actor=event_pb2.Subject(type=event_pb2.SUBJECT_TYPE_SYSTEM, **subject))
        return read_csv(csv_line(row_of(event)))[0][CSV_COLUMNS.index("actor")]

    assert actor(slug="bob", email="bob@example.com", id="u-1") == "bob"
    assert actor(email="bob@example.com", id="u-1") == "bob@example.com"
    assert actor(id="u-1", display_name="Bob") == "u-1"


def test_times_are_utc_with_microseconds_and_z() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert utc_iso(dt.datetime(2026, 11, 24, 11, 0, 0, tzinfo=paris)) == "2026-11-24T10:00:00.000000Z"
    assert utc_iso(dt.datetime(2026, 11, 24, 10, 0, 0, 5, tzinfo=dt.UTC)) == "2026-11-24T10:00:00.000005Z"


def test_a_log_line_has_the_documented_keys_in_order() -> None:
    event = make_event("acme", action="api_key.rotate", trace_id="4b" * 16, span_id="00f0" * 4)
    event.occurred_at.FromDatetime(dt.datetime(2026, 11, 24, 10, 0, 0))
    row = row_of(event, 42)
    line = log_line(row).decode()
    pairs = parse_logfmt(line)
    assert pairs == {
        "time": "2026-11-24T10:00:00.000000Z",
        "level": "info",
        "msg": event.message,
        "tenant": "acme",
        "action": "api_key.rotate",
        "outcome": "SUCCESS",
        "actor": "alice",
        "actorType": "USER",
        "resourceType": "api_key",
        "resourceId": event.resource.id,
        "resourceName": event.resource.name,
        "route": "/api/v1/api-keys",
        "method": "POST",
        "ip": "10.1.2.3",
        "userAgent": "pytest/1.0",
        "event_id": event.event_id,
        "position": "42",
        "trace_id": "4b" * 16,
        "span_id": "00f0" * 4,
    }
    assert line.startswith(f'time=2026-11-24T10:00:00.000000Z level=info msg="{event.message}" tenant=acme ')


@pytest.mark.parametrize("outcome", [event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED])
def test_failures_and_denials_log_at_warn(outcome: int) -> None:
    assert parse_logfmt(log_line(row_of(make_event("acme", outcome=outcome))).decode())["level"] == "warn"


def test_empty_values_are_left_out_of_a_log_line_but_the_message_is_always_there() -> None:
    event = make_event("acme", message="")
    event.ClearField("request")
    event.ClearField("resource")
    pairs = parse_logfmt(log_line(row_of(event)).decode())
    assert pairs["msg"] == ""
    assert not {"route", "method", "ip", "userAgent", "resourceType", "resourceId", "trace_id", "span_id"} & set(pairs)
    assert {"time", "level", "tenant", "action", "outcome", "event_id", "position"} <= set(pairs)


@pytest.mark.parametrize("text", NASTY)
def test_log_values_with_spaces_quotes_and_control_characters_stay_on_one_line_and_read_back(text: str) -> None:
    event = make_event("acme", message=text, request=event_pb2.RequestContext(user_agent=text or "x"))
    pairs = parse_logfmt(log_line(row_of(event)).decode())
    assert pairs["msg"] == text
    assert pairs["userAgent"] == (text or "x")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("bare", "bare"),
        ("", '""'),
        ("a b", '"a b"'),
        ("k=v", '"k=v"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("l1\nl2", '"l1\\nl2"'),
        ("\x1b[31m", '"\\u001b[31m"'),
        ("ünïcödé", "ünïcödé"),
    ],
)
def test_logfmt_quoting(value: str, written: str) -> None:
    assert logfmt_value(value) == written
