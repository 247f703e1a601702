"""Canonical encoding and chain hash: the same content hashes the same whether it comes from the producer's
protobuf or is read back from PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from audit.v1 import event_pb2
from audit_client.validation import ACTION_PATTERN, TENANT_PATTERN, validate_event
from audit_service.core.records import (
    CANONICAL_VERSION,
    CONTENT_COLUMNS,
    GENESIS_HASH,
    LOG_COLUMNS,
    canonical_bytes,
    chain_hash,
    content_from_event,
    content_from_row,
    datetime_to_micros,
    log_row,
    micros_to_datetime,
    normalize_json,
    parse_canonical,
    preseal,
    row_canonical_bytes,
    seal,
    seal_canonical,
    seal_presealed,
    struct_to_python,
    timestamp_micros,
)
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = 1_750_000_000
UTC = dt.UTC

# --- strategies -------------------------------------------------------------------------------------------------

texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
nonempty_texts = texts.filter(bool)
SPECIAL_FLOATS = [1.0, -1.0, 0.0, -0.0, 0.1, 1e300, -1e300, 5e-324, 2.0**53, 1e16, 1e15 + 0.5, 123456789.0]
json_numbers = (
    st.sampled_from(SPECIAL_FLOATS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53), max_value=2**53)
)
json_scalars = st.none() | st.booleans() | json_numbers | texts
# Small documents (an event holds three): nesting, every kind of value and key order are all there, and an event
# takes a few milliseconds to draw, not tens, so generation stays fast on a loaded machine.
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=3)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


struct_documents = json_objects.filter(lambda document: _depth(document) <= 30)


def _hex_id(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).filter(any).map(bytes.hex)


@st.composite
def audit_events(draw: st.DrawFn) -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        event_id=str(draw(st.uuids())),
        tenant=draw(st.from_regex(TENANT_PATTERN, fullmatch=True)),
        action=draw(st.from_regex(ACTION_PATTERN, fullmatch=True)),
        outcome=draw(st.sampled_from([v for v in event_pb2.Outcome.values() if v != event_pb2.OUTCOME_UNSPECIFIED])),
        cluster_id=draw(texts),
        workspace_id=draw(texts),
        message=draw(texts),
    )
    actor = event.actor
    actor.type = draw(st.sampled_from(list(event_pb2.SubjectType.values())))
    actor.id = draw(texts)
    actor.slug = draw(texts) if actor.id else draw(nonempty_texts)
    for name in ("display_name", "email", "pat_name", "controller_name", "external_identity_slug"):
        setattr(actor, name, draw(texts))
    for resource in (event.resource, event.parent_resource):  # any field may be empty, the type too
        resource.type, resource.id, resource.name, resource.fqn = draw(texts), draw(texts), draw(texts), draw(texts)
    event.request.route = draw(texts)
    event.request.method = draw(texts)
    event.request.user_agent = draw(texts)
    event.request.ip_address = draw(st.just("") | st.ip_addresses().map(str))
    for struct in (event.metadata, event.change.before, event.change.after):
        struct.update(draw(struct_documents))
    event.occurred_at.seconds = draw(st.integers(min_value=946_684_800, max_value=NOW))
    event.occurred_at.nanos = draw(st.integers(min_value=0, max_value=999_999_999))
    if draw(st.booleans()):
        event.trace_id = draw(_hex_id(16))
        event.span_id = draw(_hex_id(8))
    validate_event(event, now_seconds=NOW)  # the strategy only builds events the contract accepts
    return event


recorded_ats = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
)
positions = st.integers(min_value=1, max_value=2**63 - 1)
hashes = st.binary(min_size=32, max_size=32)

# --- what PostgreSQL gives back -----------------------------------------------------------------------------------


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


def _jsonb_key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode()
    return len(encoded), encoded


def _jsonb_text(value: Any) -> str:
    """Prints a parsed JSON value the way jsonb does: numbers as plain decimals, keys by length then bytes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0.0"  # numeric has no negative zero
        return format(decimal.Decimal(repr(value)), "f")  # 1e+300 prints as 1 followed by 300 zeros
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb_text(item) for item in value) + "]"
    items = sorted(value.items(), key=lambda item: _jsonb_key_order(item[0]))
    return "{" + ", ".join(f"{json.dumps(key, ensure_ascii=False)}: {_jsonb_text(item)}" for key, item in items) + "}"


JSONB_PRINTERS: dict[str, Callable[[str], str]] = {
    "reparsed": lambda text: json.dumps(json.loads(text), ensure_ascii=False),
    "integral floats as ints": lambda text: json.dumps(_integral_floats_as_ints(json.loads(text)), ensure_ascii=False),
    "numeric decimals": lambda text: _jsonb_text(json.loads(text)),
}
_STRUCT_COLUMNS = ("metadata", "change_before", "change_after")


def as_read_back(row: tuple[Any, ...], print_jsonb: Callable[[str], str]) -> dict[str, Any]:
    """The row as asyncpg returns it after a round trip through PostgreSQL."""
    stored = dict(zip(LOG_COLUMNS, row, strict=True))
    for name in _STRUCT_COLUMNS:
        if stored[name] is not None:
            stored[name] = print_jsonb(stored[name])
    for name in ("recorded_at", "occurred_at"):
        stored[name] = stored[name].astimezone(UTC)
    stored["event_id"] = uuid.UUID(str(stored["event_id"]))
    stored["prev_hash"] = bytes(stored["prev_hash"])
    stored["hash"] = bytes(stored["hash"])
    return stored


# --- properties ----------------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    event=audit_events(),
    position=positions,
    recorded_at=recorded_ats,
    prev_hash=hashes,
    revision=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
)
def test_a_presealed_event_seals_to_the_same_bytes_hash_and_row(
    event: event_pb2.AuditEvent, position: int, recorded_at: dt.datetime, prev_hash: bytes, revision: int | None
) -> None:
    """The append prepares each event's canonical content and row ahead and splices the position, recorded_at
    and revision in under the lock: it must be exactly what encoding the whole array gives (or chains break)."""
    content = content_from_event(event)
    micros = datetime_to_micros(recorded_at)
    spliced = seal_presealed(position, recorded_at, micros, preseal(content), prev_hash, revision)
    canonical, digest, row = seal_canonical(position, recorded_at, content, prev_hash, revision)
    assert spliced == (canonical, digest, (*row, len(canonical)))
    assert parse_canonical(spliced[0]) == (position, micros, content, revision)


@settings(max_examples=200)
@given(event=audit_events(), position=positions, recorded_at=recorded_ats, prev_hash=hashes)
def test_content_and_hash_survive_the_database_round_trip(
    event: event_pb2.AuditEvent, position: int, recorded_at: dt.datetime, prev_hash: bytes
) -> None:
    content = content_from_event(event)
    digest, row = seal(position, recorded_at, content, prev_hash)
    assert digest == chain_hash(prev_hash, canonical_bytes(position, datetime_to_micros(recorded_at), content))

    for printer_name, printer in JSONB_PRINTERS.items():
        stored = as_read_back(row, printer)
        read_back = content_from_row(stored)
        assert read_back == content, printer_name
        canonical = canonical_bytes(stored["position"], datetime_to_micros(stored["recorded_at"]), read_back)
        assert canonical == canonical_bytes(position, datetime_to_micros(recorded_at), content), printer_name
        assert chain_hash(stored["prev_hash"], canonical) == digest == stored["hash"], printer_name


@settings(max_examples=200)
@given(document=struct_documents)
def test_struct_content_equals_normalized_json(document: dict[str, Any]) -> None:
    struct = struct_pb2.Struct()
    struct.update(document)
    expected = None if not document else normalize_json(json.loads(json.dumps(document)))
    converted = struct_to_python(struct)
    assert converted == expected
    # equal as Python values is not enough (0.0 == -0.0, 1 == 1.0): the encodings must match too
    assert json.dumps(converted, sort_keys=True) == json.dumps(expected, sort_keys=True)


@settings(max_examples=100)
@given(event=audit_events(), position=positions, recorded_at=recorded_ats)
def test_canonical_bytes_is_deterministic(event: event_pb2.AuditEvent, position: int, recorded_at: dt.datetime) -> None:
    micros = datetime_to_micros(recorded_at)
    copy = event_pb2.AuditEvent()
    copy.ParseFromString(event.SerializeToString())
    first = canonical_bytes(position, micros, content_from_event(event))
    assert first == canonical_bytes(position, micros, content_from_event(copy))
    assert first == canonical_bytes(position, micros, content_from_event(event))
    document = json.loads(first)
    assert document[:3] == [CANONICAL_VERSION, position, micros]
    assert len(document) == 3 + len(CONTENT_COLUMNS)


# --- examples ------------------------------------------------------------------------------------------------------


def sample_event() -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        event_id="0190b2a0-7c3e-7def-8abc-0123456789ab",
        tenant="acme",
        action="api_key.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id="user-1", type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type="api_key", id="key-1"),
        message="hello",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    event.metadata.update({"b": 1, "a": [True, None, "x"], "c": {"z": 2.5}})
    event.change.after.update({"enabled": True})
    event.occurred_at.seconds = NOW - 10
    event.occurred_at.nanos = 123_456_789
    return event


SAMPLE_CONTENT = content_from_event(sample_event())
RECORDED_MICROS = (NOW - 5) * 1_000_000 + 42


def _other_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x" if value else "x"
    if value is None:
        return {"k": 1.0}
    return {**value, "extra": 1.0}


@pytest.mark.parametrize("index", range(len(CONTENT_COLUMNS)), ids=CONTENT_COLUMNS)
def test_canonical_bytes_changes_with_every_content_field(index: int) -> None:
    changed = list(SAMPLE_CONTENT)
    changed[index] = _other_value(changed[index])
    original = canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT)
    modified = canonical_bytes(7, RECORDED_MICROS, tuple(changed))
    assert original != modified
    assert chain_hash(GENESIS_HASH, original) != chain_hash(GENESIS_HASH, modified)


def test_canonical_bytes_changes_with_position_and_recorded_at() -> None:
    original = canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT)
    assert canonical_bytes(8, RECORDED_MICROS, SAMPLE_CONTENT) != original
    assert canonical_bytes(7, RECORDED_MICROS + 1, SAMPLE_CONTENT) != original


def test_a_stream_revision_is_hashed_and_changes_the_version() -> None:
    """Events of a resource stream are encoded as version 2 with their revision last; events without one keep
    version 1 byte for byte, so a revision added to, removed from or changed on a stored event breaks its hash."""
    without = canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT)
    with_revision = canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT, 3)
    assert json.loads(without)[0] == "audit.v1/1" and json.loads(with_revision)[0] == "audit.v1/2"
    assert json.loads(with_revision)[-1] == 3 and json.loads(with_revision)[1:-1] == json.loads(without)[1:]
    hashes = {chain_hash(GENESIS_HASH, encoded) for encoded in (without, with_revision)}
    hashes.add(chain_hash(GENESIS_HASH, canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT, 4)))
    assert len(hashes) == 3
    assert parse_canonical(with_revision) == (7, RECORDED_MICROS, SAMPLE_CONTENT, 3)
    assert parse_canonical(without) == (7, RECORDED_MICROS, SAMPLE_CONTENT, None)
    _, row = seal(7, micros_to_datetime(RECORDED_MICROS), SAMPLE_CONTENT, GENESIS_HASH, 3)
    stored = dict(zip(LOG_COLUMNS, row, strict=True))
    assert stored["stream_revision"] == 3
    assert row_canonical_bytes(stored) == with_revision
    with pytest.raises(ValueError, match="unknown canonical version"):
        parse_canonical(with_revision.replace(b"audit.v1/2", b"audit.v1/9"))


def test_canonical_bytes_is_compact_sorted_json() -> None:
    encoded = canonical_bytes(7, RECORDED_MICROS, SAMPLE_CONTENT)
    document = json.loads(encoded)
    assert encoded == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    metadata = document[3 + CONTENT_COLUMNS.index("metadata")]
    assert list(metadata) == ["a", "b", "c"]
    assert b'"b":1.0' in encoded  # struct numbers are floats, even when the producer wrote an int
    assert "é".encode() in canonical_bytes(1, 0, ("é", *SAMPLE_CONTENT[1:]))  # UTF-8, not \u escapes


def test_key_order_of_structs_does_not_matter() -> None:
    first, second = sample_event(), sample_event()
    first.metadata.Clear()
    first.metadata.update({"a": 1, "b": 2})
    second.metadata.Clear()
    second.metadata.update({"b": 2, "a": 1})
    assert canonical_bytes(1, 0, content_from_event(first)) == canonical_bytes(1, 0, content_from_event(second))


def test_negative_zero_encodes_as_zero() -> None:
    negative, positive = sample_event(), sample_event()
    negative.metadata.update({"z": -0.0, "nested": [{"n": -0.0}]})
    positive.metadata.update({"z": 0.0, "nested": [{"n": 0.0}]})
    negative_bytes = canonical_bytes(1, 0, content_from_event(negative))
    assert negative_bytes == canonical_bytes(1, 0, content_from_event(positive))
    assert b"-0.0" not in negative_bytes
    assert math.copysign(1.0, normalize_json(-0.0)) == 1.0
    assert math.copysign(1.0, normalize_json(json.loads("-0"))) == 1.0


def test_integers_read_back_become_floats() -> None:
    assert normalize_json({"a": [1, 2.5, True, None, "s", {"b": -3}]}) == {
        "a": [1.0, 2.5, True, None, "s", {"b": -3.0}]
    }
    normalized = normalize_json({"n": 1, "t": True, "f": False})
    assert type(normalized["n"]) is float
    assert normalized["t"] is True and normalized["f"] is False  # bool is an int subclass: must stay bool


def test_genesis_hash_is_32_zero_bytes() -> None:
    assert GENESIS_HASH == b"\x00" * 32
    assert len(GENESIS_HASH) == 32


def test_chain_hash_is_sha256_of_prev_hash_and_canonical() -> None:
    canonical = canonical_bytes(1, RECORDED_MICROS, SAMPLE_CONTENT)
    assert chain_hash(GENESIS_HASH, canonical) == hashlib.sha256(bytes(32) + canonical).digest()
    assert chain_hash(b"\x01" * 32, canonical) != chain_hash(GENESIS_HASH, canonical)


def test_empty_struct_is_none_both_ways() -> None:
    assert struct_to_python(struct_pb2.Struct()) is None
    unset = sample_event()
    unset.ClearField("metadata")
    unset.ClearField("change")
    empty = sample_event()
    empty.metadata.Clear()
    empty.change.before.Clear()
    empty.change.after.Clear()
    assert empty.HasField("metadata")
    content = content_from_event(unset)
    assert content == content_from_event(empty)
    for name in ("metadata", "change_before", "change_after"):
        assert content[CONTENT_COLUMNS.index(name)] is None

    _, row = seal(1, micros_to_datetime(RECORDED_MICROS), content, GENESIS_HASH)
    stored = dict(zip(LOG_COLUMNS, row, strict=True))
    for name in ("metadata", "change_before", "change_after"):
        assert stored[name] is None  # SQL NULL, not '{}'
    assert content_from_row(stored) == content


def test_nested_empty_struct_is_kept() -> None:
    event = sample_event()
    event.metadata.Clear()
    event.metadata.update({"empty": {}, "list": []})
    assert content_from_event(event)[CONTENT_COLUMNS.index("metadata")] == {"empty": {}, "list": []}


def test_log_row_shape() -> None:
    event = sample_event()
    event.cluster_id = ""
    content = content_from_event(event)
    recorded_at = micros_to_datetime(RECORDED_MICROS)
    digest, row = seal(9, recorded_at, content, GENESIS_HASH)
    stored = dict(zip(LOG_COLUMNS, row, strict=True))
    assert len(row) == len(LOG_COLUMNS)
    assert stored["position"] == 9
    assert stored["recorded_at"] == recorded_at
    assert str(stored["event_id"]) == event.event_id
    assert stored["cluster_id"] is None  # empty text is NULL
    assert stored["actor_id"] == "user-1"
    assert stored["outcome"] == event_pb2.OUTCOME_SUCCESS
    assert json.loads(stored["metadata"]) == {"a": [True, None, "x"], "b": 1.0, "c": {"z": 2.5}}
    assert stored["occurred_at"] == dt.datetime(2025, 6, 15, 15, 6, 30, 123_456, tzinfo=UTC)
    assert stored["prev_hash"] == GENESIS_HASH
    assert stored["hash"] == digest
    assert log_row(9, recorded_at, content, GENESIS_HASH, digest) == row


def test_occurred_at_is_truncated_to_microseconds() -> None:
    assert timestamp_micros(1, 999_999_999) == 1_999_999
    assert SAMPLE_CONTENT[CONTENT_COLUMNS.index("occurred_at")] == (NOW - 10) * 1_000_000 + 123_456
    for micros in (0, 1, 946_684_800_000_000, RECORDED_MICROS, -1):
        assert datetime_to_micros(micros_to_datetime(micros)) == micros
    assert micros_to_datetime(1_500_000) == dt.datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert datetime_to_micros(dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == (
        946_684_800_000_000 - 2 * 3600 * 1_000_000
    )
