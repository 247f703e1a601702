"""SyncPublisher: the async publisher on a background event loop, for code that is not async. Each test runs its
synchronous part in threads of its own, as a web framework's request threads would."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import audit_client
import pytest
from audit.v1 import event_pb2
from nats import connect as nats_connect
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import TracerProvider

from ..factories import make_event


@pytest.fixture
async def stream(nc: NatsClient, names: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    """A JetStream stream of tenant acme's events under the test's own subject prefix: (prefix, stream name)."""
    prefix, name = names["AUDIT_SUBJECT_PREFIX"], f"{names['AUDIT_STREAM_PREFIX']}_SYNC"
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{prefix}.acme"])
    yield prefix, name
    await js.delete_stream(name)


def publisher_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "audit-client-publisher"]


async def test_many_threads_publish_through_one_publisher(nats_url, nc, stream):
    prefix, name = stream
    before = publisher_threads()

    def run() -> tuple[list[audit_client.PublishAck], int]:
        with audit_client.connect_sync(nats_url, subject_prefix=prefix) as publisher:
            with ThreadPoolExecutor(8) as pool:
                acks = list(pool.map(publisher.publish, [make_event() for _ in range(200)]))
            running = len(publisher_threads()) - len(before)
        return acks, running

    acks, running = await asyncio.to_thread(run)
    assert running == 1, "one background loop thread while open"
    assert publisher_threads() == before, "close() stops it"
    assert sorted(ack.sequence for ack in acks) == list(range(1, 201))
    assert len({ack.event_id for ack in acks}) == 200 and {ack.stream for ack in acks} == {name}
    assert (await nc.jetstream().stream_info(name)).state.messages == 200


async def test_publish_many_returns_one_acknowledgement_per_event_in_order(nats_url, nc, stream):
    prefix, name = stream
    events = [make_event() for _ in range(300)]

    def run() -> list[audit_client.PublishAck]:
        with audit_client.connect_sync(nats_url, subject_prefix=prefix) as publisher:
            return publisher.publish_many(events, window=32)

    acks = await asyncio.to_thread(run)
    assert [ack.sequence for ack in acks] == list(range(1, 301))
    last = await nc.jetstream().get_msg(name, 300)
    assert event_pb2.AuditEvent.FromString(last.data).resource.id == events[-1].resource.id


async def test_it_raises_what_the_async_publisher_raises(nats_url, stream):
    prefix, _ = stream

    def run() -> dict[str, Exception]:
        raised: dict[str, Exception] = {}
        publisher = audit_client.connect_sync(nats_url, subject_prefix=prefix, ack_timeout=5)
        for case, event in (("no stream", make_event(tenant="nobody")), ("invalid", make_event(tenant="Not Ok"))):
            try:
                publisher.publish(event)
            except Exception as error:
                raised[case] = error
        try:
            publisher.publish_many([make_event(), make_event(tenant="nobody")])
        except Exception as error:
            raised["batch"] = error
        publisher.close()
        publisher.close()  # idempotent
        try:
            publisher.publish(make_event())
        except Exception as error:
            raised["closed"] = error
        return raised

    raised = await asyncio.to_thread(run)
    assert type(raised["no stream"]) is audit_client.PublishError
    assert "NoStreamResponseError" in str(raised["no stream"])
    assert isinstance(raised["invalid"], audit_client.InvalidEventError) and raised["invalid"].field == "tenant"
    assert isinstance(raised["batch"], audit_client.PublishBatchError)
    assert sorted(raised["batch"].errors) == [1] and raised["batch"].acks[0].sequence == 1
    assert type(raised["closed"]) is audit_client.PublishError and "closed" in str(raised["closed"])


async def test_the_callers_span_is_the_one_recorded(nats_url, nc, stream):
    # The span of the request thread that publishes, not of the background loop's thread (which has none).
    prefix, name = stream
    tracer = TracerProvider().get_tracer("django-view")

    def run() -> tuple[audit_client.PublishAck, str, str]:
        with (
            audit_client.connect_sync(nats_url, subject_prefix=prefix) as publisher,
            tracer.start_as_current_span("POST /api-keys") as span,
        ):
            ack = publisher.publish(make_event())
        context = span.get_span_context()
        return ack, format(context.trace_id, "032x"), format(context.span_id, "016x")

    ack, trace_id, span_id = await asyncio.to_thread(run)
    stored = await nc.jetstream().get_msg(name, ack.sequence)
    event = event_pb2.AuditEvent.FromString(stored.data)
    assert (event.trace_id, event.span_id) == (trace_id, span_id)
    assert stored.headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")


async def test_refused_credentials_fail_at_once_and_leave_no_thread(tmp_path):
    # A server of its own that wants a user, as production's does.
    from audit_service.devstack.nats import NatsServer
    from audit_service.devstack.processes import free_port

    config = tmp_path / "auth.conf"
    config.write_text('authorization { users = [ { user: "producer-acme", password: "right" } ] }\n')
    server = NatsServer(tmp_path / "nats", port=free_port(), config_file=config)
    server.start()
    before = publisher_threads()
    try:

        def run() -> Exception | None:
            try:
                audit_client.connect_sync(f"nats://producer-acme:wrong@127.0.0.1:{server.port}")
            except Exception as error:
                return error
            return None

        refused = await asyncio.to_thread(run)
    finally:
        server.stop()
    assert type(refused).__name__ == "AuthorizationError", refused
    assert publisher_threads() == before


async def test_close_while_nats_is_unreachable_closes_without_raising_natss_internals(tmp_path):
    """NATS went away (reconnecting): close() raised nats.errors.ConnectionReconnectingError from drain(), from
    nats-py's internals, and left the connection to its reconnect loop. Now it closes, and the publisher refuses
    later publishes with PublishError; the async Publisher likewise."""
    from audit_service.devstack.nats import NatsServer
    from audit_service.devstack.processes import free_port

    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    before = publisher_threads()
    try:
        nc = await nats_connect(server.url)
        await nc.jetstream().add_stream(name="GONE", subjects=["gone.>"])
        await nc.close()
        sync_publisher = await asyncio.to_thread(
            audit_client.connect_sync, server.url, subject_prefix="gone", ack_timeout=1
        )
        async_publisher = await audit_client.connect(server.url, subject_prefix="gone", ack_timeout=1)
        await asyncio.to_thread(sync_publisher.publish, make_event(tenant="acme"))
        await async_publisher.publish(make_event(tenant="acme"))
    finally:
        server.stop()
    with pytest.raises(audit_client.PublishError):
        await async_publisher.publish(make_event(tenant="acme"))
    await async_publisher.close()
    assert async_publisher._nc.is_closed
    await asyncio.to_thread(sync_publisher.close)
    assert publisher_threads() == before
    with pytest.raises(audit_client.PublishError, match="closed"):
        await asyncio.to_thread(sync_publisher.publish, make_event(tenant="acme"))


async def test_nats_going_away_mid_batch_names_the_events_not_acknowledged_and_close_still_closes(tmp_path, caplog):
    """publish_many of large events while NATS stops: a PublishBatchError naming what was not acknowledged; then
    close() closes without raising (before: BrokenPipeError, or ConnectionReconnectingError, from nats-py), and
    reconnection attempts are logged one line each, without nats-py's tracebacks."""
    from audit_service.devstack.nats import NatsServer
    from audit_service.devstack.processes import free_port

    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    try:
        nc = await nats_connect(server.url)
        await nc.jetstream().add_stream(name="AWAY", subjects=["away.>"])
        await nc.close()
        publisher = await asyncio.to_thread(audit_client.connect_sync, server.url, subject_prefix="away", ack_timeout=2)
        events = [make_event(tenant="acme", message="x" * 16_000) for _ in range(4_000)]
        first_acks = await asyncio.to_thread(publisher.publish_many, events[:10])
        assert len(first_acks) == 10
        with caplog.at_level("ERROR", logger="nats.aio.client"):
            batch = asyncio.create_task(asyncio.to_thread(publisher.publish_many, events[10:], window=16))
            await asyncio.sleep(0.05)  # stopped early in the batch, or before it starts: either way, not all acked
            server.stop()
            with pytest.raises(audit_client.PublishBatchError) as failed:
                await batch
            await asyncio.to_thread(publisher.close)
    finally:
        server.stop()
    assert failed.value.errors, "some events are named as not acknowledged"
    assert all(record.exc_info is None for record in caplog.records if record.name == "nats.aio.client")
