"""Publisher.prepare: completes, validates and encodes an event without sending it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from audit.v1 import event_pb2
from audit_client import new_event_id
from audit_client.errors import EventTooLargeError, InvalidEventError
from audit_client.publisher import PROTOBUF_CONTENT_TYPE, Publisher
from audit_client.validation import Limits
from audit_service.core.decode import decode_event
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

EVENT_ID = "0190b2a0-7c3e-7def-8abc-0123456789ab"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def make_publisher(limits: Limits | None = None) -> Publisher:
    """A publisher on a NATS client that is never connected: prepare() needs no server."""
    if limits is None:
        return Publisher(Client(), owns_connection=False)
    return Publisher(Client(), owns_connection=False, limits=limits)


def make_event() -> event_pb2.AuditEvent:
    event = event_pb2.AuditEvent(
        tenant="acme",
        action="api_key.create",
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=event_pb2.Subject(id="user-1", type=event_pb2.SUBJECT_TYPE_USER),
        message="created",
    )
    event.metadata.update({"key": "ci"})
    return event


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    provider = TracerProvider()
    yield provider.get_tracer("tests.unit")
    provider.shutdown()


def test_prepare_fills_event_id_and_occurred_at() -> None:
    before = time.time()
    prepared, payload, headers = make_publisher().prepare(make_event())
    after = time.time()

    parsed = uuid.UUID(prepared.event_id)
    assert str(parsed) == prepared.event_id
    assert parsed.version == 7
    assert prepared.HasField("occurred_at")
    assert before - 1 <= prepared.occurred_at.ToNanoseconds() / 1e9 <= after + 1
    assert event_pb2.AuditEvent.FromString(payload) == prepared
    assert headers["Nats-Msg-Id"] == prepared.event_id
    assert headers["Content-Type"] == PROTOBUF_CONTENT_TYPE == "application/x-protobuf"


def test_generated_event_ids_are_unique_time_ordered_uuid7() -> None:
    publisher = make_publisher()
    ids = [publisher.prepare(make_event())[0].event_id for _ in range(50)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(event_id).version == 7 for event_id in ids)
    assert uuid.UUID(new_event_id()).version == 7
    # the first 48 bits of a UUIDv7 are its Unix time in milliseconds
    assert abs((uuid.UUID(ids[0]).int >> 80) - time.time() * 1000) < 60_000


def test_prepare_keeps_the_callers_event_id_and_occurred_at() -> None:
    event = make_event()
    event.event_id = EVENT_ID
    event.occurred_at.FromSeconds(int(time.time()) - 3600)
    prepared, _, headers = make_publisher().prepare(event)
    assert prepared.event_id == EVENT_ID
    assert prepared.occurred_at == event.occurred_at
    assert headers["Nats-Msg-Id"] == EVENT_ID


def test_callers_event_is_not_modified() -> None:
    event = make_event()
    event.position = 5
    event.hash = "ab" * 32
    snapshot = event.SerializeToString()
    prepared, _, _ = make_publisher().prepare(event)
    assert event.SerializeToString() == snapshot
    assert event.event_id == ""
    assert not event.HasField("occurred_at")
    assert prepared is not event


def test_service_owned_fields_are_cleared() -> None:
    event = make_event()
    event.position = 5
    event.recorded_at.FromSeconds(1_700_000_000)
    event.hash = "ab" * 32
    event.prev_hash = "cd" * 32
    prepared, payload, _ = make_publisher().prepare(event)
    assert prepared.position == 0
    assert not prepared.HasField("recorded_at")
    assert (prepared.hash, prepared.prev_hash) == ("", "")
    assert event_pb2.AuditEvent.FromString(payload).position == 0


def test_trace_ids_and_traceparent_come_from_the_current_span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("create api key") as span:
        prepared, _, headers = make_publisher().prepare(make_event())
    context = span.get_span_context()
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    assert (prepared.trace_id, prepared.span_id) == (trace_id, span_id)
    assert headers["traceparent"] == f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"
    assert context.trace_flags.sampled


def test_events_own_trace_ids_are_kept_inside_a_span(tracer: trace.Tracer) -> None:
    event = make_event()
    event.trace_id, event.span_id = TRACE_ID, SPAN_ID
    with tracer.start_as_current_span("operation") as span:
        prepared, _, headers = make_publisher().prepare(event)
    assert (prepared.trace_id, prepared.span_id) == (TRACE_ID, SPAN_ID)
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")


def test_without_a_span_there_is_no_traceparent() -> None:
    assert not trace.get_current_span().get_span_context().is_valid
    prepared, _, headers = make_publisher().prepare(make_event())
    assert "traceparent" not in headers
    assert (prepared.trace_id, prepared.span_id) == ("", "")
    assert set(headers) == {"Nats-Msg-Id", "Content-Type"}


def test_prepared_event_is_accepted_by_the_service(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("operation"):
        prepared, payload, headers = make_publisher().prepare(make_event())
    assert decode_event(payload, headers, now_seconds=time.time(), limits=Limits()).event == prepared


def test_invalid_event_is_refused_by_prepare() -> None:
    event = make_event()
    event.tenant = "Acme.Corp"
    with pytest.raises(InvalidEventError) as caught:
        make_publisher().prepare(event)
    assert (caught.value.field, caught.value.reason) == ("tenant", "invalid_field")


async def test_invalid_event_is_refused_before_anything_is_sent() -> None:
    """The client is not connected: reaching JetStream would fail differently (not with InvalidEventError)."""
    event = make_event()
    event.outcome = event_pb2.OUTCOME_UNSPECIFIED
    with pytest.raises(InvalidEventError) as caught:
        await make_publisher().publish(event)
    assert (caught.value.field, caught.value.reason) == ("outcome", "missing_field")


def test_invalid_trace_ids_are_refused() -> None:
    event = make_event()
    event.trace_id = TRACE_ID
    with pytest.raises(InvalidEventError) as caught:
        make_publisher().prepare(event)
    assert caught.value.field == "span_id"


def test_oversized_event_is_refused() -> None:
    event = make_event()
    event.message = "x" * 500
    publisher = make_publisher(Limits(max_event_bytes=300))
    with pytest.raises(EventTooLargeError) as caught:
        publisher.prepare(event)
    assert caught.value.reason == "too_large"
    assert caught.value.limit == 300
    assert caught.value.size > 500
    assert isinstance(caught.value, InvalidEventError)
    make_publisher(Limits(max_event_bytes=1000)).prepare(event)


def test_publisher_limits_apply_to_validation() -> None:
    event = make_event()
    event.message = "x" * 20
    with pytest.raises(InvalidEventError) as caught:
        make_publisher(Limits(max_message_chars=10)).prepare(event)
    assert caught.value.field == "message"


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Publisher(Client(), owns_connection=False, max_in_flight=0)
