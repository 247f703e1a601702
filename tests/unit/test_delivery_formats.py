"""The bytes destinations and webhooks send, read back by independent parsers: JSON, a splitter of concatenated
HEC objects, an RFC 5424 regular expression, and the Standard Webhooks reference verifier and test vector."""

from __future__ import annotations

import base64
import decimal
import json
import re
import time

import orjson
import pytest
from audit.v1 import event_pb2
from audit_service.core.delivery_formats import (
    SD_ID,
    http_batch_body,
    new_webhook_secret,
    octet_counted,
    sign_webhook,
    splunk_hec_body,
    syslog_message,
)
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ..factories import make_event, stamp

# RFC 5424 section 6, as a regular expression: header fields of PRINTUSASCII, one SD-ELEMENT, MSG after a space.
RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 "
    rb"(?P<timestamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) "
    rb"(?P<hostname>[\x21-\x7e]{1,255}) "
    rb"(?P<app>[\x21-\x7e]{1,48}) "
    rb"(?P<procid>[\x21-\x7e]{1,128}) "
    rb"(?P<msgid>[\x21-\x7e]{1,32}) "
    rb"\[(?P<sd_id>[^ =\]\"]{1,32})(?P<params>(?: [^ =\]\"]{1,32}=\"(?:[^\"\\\]]|\\[\"\\\]])*\")*)\] "
    rb"(?P<msg>.*)\Z",
    re.DOTALL,
)
SD_PARAM = re.compile(r' ([^ =\]"]+)="((?:[^"\\\]]|\\["\\\]])*)"')


def stored(position: int = 42, **overrides: object) -> event_pb2.AuditEvent:
    event = stamp(make_event("acme", **overrides))
    event.occurred_at.FromJsonString("2026-11-24T10:00:00.123456789Z")
    event.recorded_at.FromJsonString("2026-11-24T10:00:01.000001Z")
    event.position = position
    event.hash, event.prev_hash = "ab" * 32, "cd" * 32
    return event


def parse_syslog(message: bytes) -> tuple[re.Match[bytes], dict[str, str]]:
    match = RFC5424.match(message)
    assert match is not None, message
    params = {
        name: re.sub(r"\\([\"\\\]])", r"\1", value) for name, value in SD_PARAM.findall(match["params"].decode("utf-8"))
    }
    return match, params


def test_an_http_batch_is_the_events_canonical_json_with_their_positions_and_ids() -> None:
    events = [stored(7), stored(8)]
    body = orjson.loads(http_batch_body(events, "dest-1"))

    assert body["destination"] == "dest-1"
    assert [e["position"] for e in body["events"]] == ["7", "8"]
    assert [e["eventId"] for e in body["events"]] == [e.event_id for e in events]
    assert [json_format.ParseDict(e, event_pb2.AuditEvent()) for e in body["events"]] == events


def test_an_empty_http_batch_is_still_an_object() -> None:
    assert orjson.loads(http_batch_body([], "dest-1")) == {"destination": "dest-1", "events": []}


def split_concatenated_json(body: bytes, parse_float=float) -> list[dict]:
    decoder, text, objects, index = json.JSONDecoder(parse_float=parse_float), body.decode(), [], 0
    while index < len(text):
        while text[index].isspace():
            index += 1
        value, index = decoder.raw_decode(text, index)
        objects.append(value)
    return objects


def test_a_splunk_hec_body_is_one_object_per_event_with_occurred_at_as_time() -> None:
    events = [stored(1), stored(2, message="second 😀")]
    body = splunk_hec_body(events, index="audit", source="audit-log", sourcetype="_json", host="audit-1")

    objects = split_concatenated_json(body)

    assert [o["time"] for o in split_concatenated_json(body, decimal.Decimal)] == [
        decimal.Decimal("1795514400.123456")  # 2026-11-24T10:00:00.123456Z; nanoseconds dropped
    ] * 2
    assert len(objects) == 2
    for obj, event in zip(objects, events, strict=True):
        assert list(obj) == ["time", "host", "source", "sourcetype", "index", "event"]
        assert (obj["host"], obj["source"], obj["sourcetype"], obj["index"]) == (
            "audit-1",
            "audit-log",
            "_json",
            "audit",
        )
        assert json_format.ParseDict(obj["event"], event_pb2.AuditEvent()) == event
    assert objects[1]["event"]["message"] == "second 😀"


def test_a_splunk_hec_event_has_no_index_when_none_is_set() -> None:
    (obj,) = split_concatenated_json(splunk_hec_body([stored()], index="", source="s", sourcetype="t", host="h"))
    assert "index" not in obj


@given(
    seconds=st.integers(min_value=0, max_value=253402300799),  # to 9999-12-31, protobuf's Timestamp range
    micros=st.integers(min_value=0, max_value=999_999),
)
def test_hec_time_keeps_every_microsecond(seconds: int, micros: int) -> None:
    event = event_pb2.AuditEvent()
    event.occurred_at.seconds, event.occurred_at.nanos = seconds, micros * 1000 + 999
    body = splunk_hec_body([event], index="", source="s", sourcetype="t", host="h")
    (obj,) = split_concatenated_json(body, decimal.Decimal)
    assert obj["time"] == decimal.Decimal(f"{seconds}.{micros:06d}")


def test_a_syslog_message_parses_as_rfc5424_with_its_structured_data_and_json() -> None:
    event = stored(42, outcome=event_pb2.OUTCOME_DENIED)
    event.actor.slug = 'al"ice] \\ 😀'

    match, params = parse_syslog(syslog_message(event, app_name="audit-log", hostname="audit-1", facility=13))

    assert int(match["pri"]) == 13 * 8 + 4  # facility log audit, severity warning
    assert match["timestamp"] == b"2026-11-24T10:00:00.123456Z"
    assert (match["hostname"], match["app"], match["procid"], match["msgid"]) == (
        b"audit-1",
        b"audit-log",
        b"-",
        b"api_key.create",
    )
    assert match["sd_id"].decode() == SD_ID == "audit@32473"
    assert params == {
        "tenant": "acme",
        "event_id": event.event_id,
        "position": "42",
        "actor": 'al"ice] \\ 😀',
        "resource": f"api_key/{event.resource.id}",
    }
    assert match["msg"].startswith(b"\xef\xbb\xbf")
    assert json_format.ParseDict(orjson.loads(match["msg"][3:]), event_pb2.AuditEvent()) == event


def test_syslog_severity_is_informational_for_success() -> None:
    match, _ = parse_syslog(syslog_message(stored(), app_name="a", hostname="h", facility=1))
    assert int(match["pri"]) == 1 * 8 + 6


def test_syslog_header_fields_are_cut_to_printable_ascii_and_their_lengths() -> None:
    event = stored(action="a" * 40 + ".é vent")
    event.ClearField("resource")
    event.actor.Clear()

    match, params = parse_syslog(syslog_message(event, app_name="audit log ✓" + "x" * 60, hostname="", facility=0))

    assert match["msgid"] == b"a" * 32
    assert match["app"] == (b"audit_log_" + b"_" + b"x" * 60)[:48]
    assert match["hostname"] == b"-"
    assert "actor" not in params and "resource" not in params


def test_a_syslog_facility_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="facility"):
        syslog_message(stored(), app_name="a", hostname="h", facility=24)


@pytest.mark.parametrize("message", [b"", b"<14>1 - - - - - -", "ein 😀 Ereignis".encode()])
def test_an_octet_count_is_the_byte_length_of_the_message(message: bytes) -> None:
    count, _, rest = octet_counted(message).partition(b" ")
    assert int(count) == len(message) and rest == message


def test_an_octet_counted_syslog_message_counts_bytes_of_four_byte_utf8() -> None:
    message = syslog_message(stored(message="𝄞😀"), app_name="a", hostname="h", facility=13)
    frame = octet_counted(message)
    count, _, rest = frame.partition(b" ")
    assert int(count) == len(rest) == len(message) > len(message.decode())


def test_a_webhook_signature_is_the_standard_webhooks_reference_vector() -> None:
    # The test vector of the Standard Webhooks specification (and of Svix's libraries).
    headers = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_signed_webhook_verifies_with_the_reference_library_and_an_altered_one_does_not() -> None:
    secret = new_webhook_secret()
    body = http_batch_body([stored()], "dest-1")
    headers = sign_webhook(secret, "msg-1", int(time.time()), body)

    assert Webhook(secret).verify(body, headers) == orjson.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"acme", b"acmf"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)


def test_a_new_webhook_secret_is_32_random_bytes_in_base64() -> None:
    secrets_ = {new_webhook_secret() for _ in range(3)}
    assert len(secrets_) == 3
    for secret in secrets_:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
