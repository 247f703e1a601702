"""W3C traceparent parsing."""

from __future__ import annotations

import pytest
from audit_service.core.tracecontext import TraceParent, parse_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_valid_header_is_parsed() -> None:
    assert parse_traceparent(VALID) == TraceParent(trace_id=TRACE_ID, span_id=SPAN_ID, flags=1)


def test_flags_are_parsed_as_hex() -> None:
    assert parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00").flags == 0
    assert parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-ff").flags == 255


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_traceparent(f"  {VALID}\t") == TraceParent(TRACE_ID, SPAN_ID, 1)


def test_future_version_may_carry_more_fields() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01-what-comes-next") == TraceParent(TRACE_ID, SPAN_ID, 1)
    assert parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01") == TraceParent(TRACE_ID, SPAN_ID, 1)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", id="version ff"),
        pytest.param(f"00-{'0' * 32}-{SPAN_ID}-01", id="zero trace id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero span id"),
        pytest.param(VALID.upper(), id="uppercase"),
        pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", id="uppercase trace id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID.upper()}-01", id="uppercase span id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-0A", id="uppercase flags"),
        pytest.param(f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", id="short trace id"),
        pytest.param(f"00-{TRACE_ID}0-{SPAN_ID}-01", id="long trace id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID[:-1]}-01", id="short span id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}0-01", id="long span id"),
        pytest.param(f"0-{TRACE_ID}-{SPAN_ID}-01", id="short version"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-1", id="short flags"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}", id="no flags"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-extra", id="version 00 with extra fields"),
        pytest.param(f"01-{TRACE_ID}-{SPAN_ID}-01extra", id="extra fields without a dash"),
        pytest.param(f"00_{TRACE_ID}_{SPAN_ID}_01", id="wrong separators"),
        pytest.param(f"00-{'g' * 32}-{SPAN_ID}-01", id="not hex"),
    ],
)
def test_invalid_header_gives_none(value: str | None) -> None:
    assert parse_traceparent(value) is None
