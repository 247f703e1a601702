"""decode_event: bytes and headers of a NATS message to a validated AuditEvent, or the reason why not."""

from __future__ import annotations

import json
import time

import pytest
from audit.v1 import audit_service_pb2, event_pb2
from audit_client.errors import EventTooLargeError, InvalidEventError
from audit_client.validation import Limits
from audit_service.core.decode import decode_event
from google.protobuf import json_format

EVENT_ID = "0190b2a0-7c3e-7def-8abc-0123456789ab"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
HEADER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HEADER_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{HEADER_TRACE_ID}-{HEADER_SPAN_ID}-01"
JSON = {"Content-Type": "application/json"}


def make_event() -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        event_id=EVENT_ID,
        tenant="acme",
        action="api_key.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id="user-1", type=event_pb2.SUBJECT_TYPE_USER),
        resource=event_pb2.Resource(type="api_key", id="key-1"),
        request=event_pb2.RequestContext(ip_address="2001:db8::1", method="POST"),
        message="created",
    )
    event.metadata.update({"n": 1.5, "list": [1, "two", None, True], "obj": {"k": "v"}})
    event.change.after.update({"enabled": True})
    event.occurred_at.seconds = int(time.time()) - 60
    event.occurred_at.nanos = 500_000_000
    return event


def decode(data: bytes, headers: dict[str, str] | None = None, limits: Limits | None = None) -> event_pb2.AuditEvent:
    return decode_event(data, headers, now_seconds=time.time(), limits=limits or Limits()).event


def refusal(data: bytes, headers: dict[str, str] | None = None, limits: Limits | None = None) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as caught:
        decode(data, headers, limits)
    return caught.value


def as_json(event: event_pb2.AuditEvent) -> bytes:
    return json_format.MessageToJson(event).encode()


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Content-Type": "application/x-protobuf"},
        {"Content-Type": "application/protobuf"},
        {"Content-Type": "Application/X-Protobuf; proto=audit.v1.AuditEvent"},
    ],
)
def test_protobuf_is_decoded(headers: dict[str, str] | None) -> None:
    event = make_event()
    assert decode(event.SerializeToString(), headers) == event


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
def test_json_is_decoded(content_type: str) -> None:
    event = make_event()
    assert decode(as_json(event), {"Content-Type": content_type}) == event


def test_json_with_snake_case_names_is_decoded() -> None:
    event = make_event()
    document = json_format.MessageToDict(event, preserving_proto_field_name=True)
    assert "event_id" in document
    assert decode(json.dumps(document).encode(), JSON) == event


def test_json_with_enum_numbers_is_decoded() -> None:
    event = make_event()
    document = json_format.MessageToDict(event, use_integers_for_enums=True)
    assert document["outcome"] == event_pb2.OUTCOME_SUCCESS
    assert decode(json.dumps(document).encode(), JSON) == event


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"garbage bytes that are not protobuf"])
def test_garbage_bytes_are_refused(data: bytes) -> None:
    assert refusal(data).reason in {"invalid_protobuf", "missing_field"}


def test_invalid_protobuf_is_refused_as_such() -> None:
    error = refusal(b"\xff\xff\xff\xff")
    assert error.reason == "invalid_protobuf"
    assert error.field == ""


def test_other_message_type_is_refused() -> None:
    """A message with fields AuditEvent does not define is not an AuditEvent."""
    other = audit_service_pb2.CountEventsResponse(total=12345)
    assert refusal(other.SerializeToString()).reason == "invalid_protobuf"


def test_empty_protobuf_is_refused_for_its_missing_fields() -> None:
    error = refusal(b"")
    assert (error.field, error.reason) == ("event_id", "missing_field")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"outcome": {"x": 1}}, id="outcome object"),
        pytest.param({"outcome": "OUTCOME_MAYBE"}, id="unknown outcome name"),
        pytest.param({"tenant": 5}, id="tenant number"),
        pytest.param({"tenant": ["acme"]}, id="tenant list"),
        pytest.param({"actor": "user-1"}, id="actor string"),
        pytest.param({"occurredAt": "yesterday"}, id="bad timestamp"),
        pytest.param({"metadata": [1, 2]}, id="metadata list"),
        pytest.param({"noSuchField": 1}, id="unknown field"),
        # A lone surrogate (valid JSON: "\\ud800") in an unknown field's name: protobuf's upb raised SystemError,
        # which the worker logged as a decoder bug, with a traceback, for each such message.
        pytest.param({"x\ud800": 1}, id="unknown field named with a lone surrogate"),
        pytest.param({"message": "a\udc00"}, id="lone surrogate in a value"),
    ],
)
def test_json_of_the_wrong_shape_is_a_schema_mismatch(change: dict) -> None:
    document = json.loads(as_json(make_event()))
    document.update(change)
    error = refusal(json.dumps(document).encode(), JSON)
    assert error.reason == "schema_mismatch"


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"event"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_schema_mismatch(payload: bytes) -> None:
    assert refusal(payload, JSON).reason == "schema_mismatch"


@pytest.mark.parametrize("payload", [b"{not json", b"", b'{"tenant": "acme"', b"\xff\xfe\xfa"])
def test_invalid_json_is_refused(payload: bytes) -> None:
    assert refusal(payload, JSON).reason == "invalid_json"


def test_deeply_nested_json_is_refused_as_invalid() -> None:
    """A few kilobytes of brackets, far below the size limit, must be refused like any bad payload rather than
    escape decode_event as RecursionError (which the ingest worker can only log as an unexpected decoder bug)."""
    payload = b"[" * 5000 + b"]" * 5000
    assert len(payload) < Limits().max_event_bytes
    error = refusal(payload, JSON)
    assert error.reason in {"invalid_json", "schema_mismatch"}


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_json_enum_with_an_infinite_number_is_a_schema_mismatch(number: str) -> None:
    """1e400 parses to infinity; protobuf's json_format then fails with OverflowError, which must not escape."""
    payload = as_json(make_event()).replace(b'"OUTCOME_SUCCESS"', number.encode())
    assert number.encode() in payload
    error = refusal(payload, JSON)
    assert error.reason in {"schema_mismatch", "invalid_field"}


def test_validation_errors_come_through() -> None:
    event = make_event()
    event.tenant = "Not.Valid"
    error = refusal(event.SerializeToString())
    assert (error.field, error.reason) == ("tenant", "invalid_field")
    error = refusal(as_json(event), JSON)
    assert (error.field, error.reason) == ("tenant", "invalid_field")


def test_non_finite_json_numbers_are_refused_by_validation() -> None:
    document = json.loads(as_json(make_event()))
    document["metadata"]["n"] = float("nan")
    payload = json.dumps(document).encode()
    assert b"NaN" in payload
    with pytest.raises(InvalidEventError):
        decode(payload, JSON)


def test_oversized_payload_is_refused_before_parsing() -> None:
    event = make_event()
    data = event.SerializeToString()
    limits = Limits(max_event_bytes=len(data) - 1)
    with pytest.raises(EventTooLargeError) as caught:
        decode(data, None, limits)
    assert caught.value.reason == "too_large"
    assert (caught.value.size, caught.value.limit) == (len(data), len(data) - 1)
    # garbage is refused for its size first: the size check comes before parsing
    with pytest.raises(EventTooLargeError):
        decode(b"\xff" * 100, None, Limits(max_event_bytes=99))
    assert decode(data, None, Limits(max_event_bytes=len(data))) == event


def test_oversized_json_is_refused() -> None:
    data = as_json(make_event())
    with pytest.raises(EventTooLargeError) as caught:
        decode(data, JSON, Limits(max_event_bytes=len(data) - 1))
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/jsonx", "json"])
def test_unknown_content_type_is_refused(content_type: str) -> None:
    error = refusal(make_event().SerializeToString(), {"Content-Type": content_type})
    assert error.reason == "unsupported_content_type"


@pytest.mark.parametrize("as_json_payload", [False, True], ids=["protobuf", "json"])
def test_trace_ids_come_from_traceparent_when_the_event_has_none(as_json_payload: bool) -> None:
    event = make_event()
    headers = {"traceparent": TRACEPARENT}
    if as_json_payload:
        decoded = decode(as_json(event), {**headers, **JSON})
    else:
        decoded = decode(event.SerializeToString(), headers)
    assert (decoded.trace_id, decoded.span_id) == (HEADER_TRACE_ID, HEADER_SPAN_ID)


def test_trace_ids_of_the_event_win_over_traceparent() -> None:
    event = make_event()
    event.trace_id, event.span_id = TRACE_ID, SPAN_ID
    decoded = decode(event.SerializeToString(), {"traceparent": TRACEPARENT})
    assert (decoded.trace_id, decoded.span_id) == (TRACE_ID, SPAN_ID)


def test_half_set_trace_ids_are_not_completed_from_traceparent() -> None:
    event = make_event()
    event.trace_id = TRACE_ID
    error = refusal(event.SerializeToString(), {"traceparent": TRACEPARENT})
    assert (error.field, error.reason) == ("span_id", "missing_field")


@pytest.mark.parametrize("traceparent", [f"ff-{HEADER_TRACE_ID}-{HEADER_SPAN_ID}-01", "garbage", ""])
def test_invalid_traceparent_is_ignored(traceparent: str) -> None:
    decoded = decode(make_event().SerializeToString(), {"traceparent": traceparent})
    assert (decoded.trace_id, decoded.span_id) == ("", "")


def test_without_traceparent_trace_ids_stay_empty() -> None:
    decoded = decode(make_event().SerializeToString(), {"Content-Type": "application/x-protobuf"})
    assert (decoded.trace_id, decoded.span_id) == ("", "")


@pytest.mark.parametrize("as_json_payload", [False, True], ids=["protobuf", "json"])
def test_service_owned_fields_are_cleared(as_json_payload: bool) -> None:
    event = make_event()
    event.position = 99
    event.recorded_at.seconds = 1_000_000_000
    event.hash = "ab" * 32
    event.prev_hash = "cd" * 32
    data, headers = (as_json(event), JSON) if as_json_payload else (event.SerializeToString(), None)
    decoded = decode(data, headers)
    assert decoded.position == 0
    assert not decoded.HasField("recorded_at")
    assert (decoded.hash, decoded.prev_hash) == ("", "")
    assert decoded == make_event()


def test_an_event_published_on_its_own_tenants_subject_is_accepted() -> None:
    data = make_event().SerializeToString()
    decoded = decode_event(data, None, now_seconds=time.time(), limits=Limits(), subject_tenant="acme")
    assert decoded.event.tenant == "acme"


@pytest.mark.parametrize("subject_tenant", ["globex", "acme.extra", "", "ACME"])
def test_an_event_for_another_tenant_than_its_subject_is_refused(subject_tenant: str) -> None:
    for data, headers in ((make_event().SerializeToString(), None), (as_json(make_event()), JSON)):
        with pytest.raises(InvalidEventError) as caught:
            decode_event(data, headers, now_seconds=time.time(), limits=Limits(), subject_tenant=subject_tenant)
        assert (caught.value.field, caught.value.reason) == ("tenant", "tenant_mismatch")
        assert "'acme'" in caught.value.detail
