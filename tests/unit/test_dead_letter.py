"""Dead letters keep the original bytes, unless they would not fit in one NATS message."""

from audit_service.ingest.dead_letter import BODY_OMITTED_HEADER, dead_letter_message
from nats.aio.msg import Msg

REPLY = "$JS.ACK.AUDIT_EVENTS.audit-ingest.1.42.42.1700000000000000000.0"


def message(data: bytes) -> Msg:
    return Msg(
        _client=None,
        subject="audit.events.acme",
        reply=REPLY,
        data=data,
        headers={"Nats-Msg-Id": "abc", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )


def test_the_original_bytes_and_headers_are_kept():
    body, headers = dead_letter_message(
        message(b"\x01garbage"), reason="invalid_protobuf", field="", detail="bad\nbytes", max_payload=1 << 20
    )
    assert body == b"\x01garbage"
    assert headers["Audit-Dead-Reason"] == "invalid_protobuf"
    assert headers["Audit-Dead-Detail"] == "bad bytes", "header values are one line"
    assert headers["Audit-Original-Msg-Id"] == "abc" and headers["traceparent"].startswith("00-")
    assert headers["Nats-Msg-Id"] == "dead-AUDIT_EVENTS-42", "re-dead-lettering the same message is de-duplicated"
    assert headers["Audit-Original-Stream-Sequence"] == "42"
    assert BODY_OMITTED_HEADER not in headers


def test_a_body_that_would_not_fit_with_the_headers_is_left_out_with_a_pointer():
    body, headers = dead_letter_message(
        message(b"x" * 1000), reason="too_large", field="", detail="too big", max_payload=1100
    )
    assert body == b""
    assert (
        "1000 bytes" in headers[BODY_OMITTED_HEADER]
        and "message 42 of stream AUDIT_EVENTS" in headers[BODY_OMITTED_HEADER]
    )
