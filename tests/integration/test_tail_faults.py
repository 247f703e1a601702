"""TailEvents through faults: lost announcements, two API replicas, a NATS restart, an API process killed and
restarted under a reconnecting client, and a subscriber that stops reading while 50k events arrive."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_client import PublishError, tail_events
from audit_client import connect as connect_publisher
from audit_service.config import load_config
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port

from ..conftest import eventually, serving_api, store_events
from ..factories import make_event
from ..tail_helpers import Reader, assert_same_sequence

pytestmark = pytest.mark.slow


async def publish(publisher, count: int, tenant: str = "acme") -> list[str]:
    ids = []
    for start in range(0, count, 200):
        acks = await asyncio.gather(
            *(publisher.publish(make_event(tenant=tenant)) for _ in range(min(200, count - start)))
        )
        ids.extend(ack.event_id for ack in acks)
    return ids


async def log_ids(owner, tenant: str = "acme") -> list[str]:
    """The tenant's event ids in position order, as the log holds them."""
    rows = await owner.fetch("SELECT event_id::text FROM audit_events WHERE tenant = $1 ORDER BY position", tenant)
    return [row[0] for row in rows]


async def test_two_replicas_fill_an_append_whose_announcement_was_lost(
    service_env, database, start_worker, publisher, owner
):
    # No polling: only the position jump of the next announcement can reveal the lost one.
    config = load_config(env={**service_env, "AUDIT_TAIL_POLL_SECONDS": "3600"})
    await start_worker()
    async with serving_api(config) as one, serving_api(config) as two:
        tails = [
            Reader.on_port(server.port, pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme")))
            for server in (one, two)
        ]
        for tail in tails:
            await tail.caught_up()
        before = await publish(publisher, 50)
        # Appended like the worker does, but never announced: as if its announcement was lost on the way.
        unannounced = await store_events(database, [make_event() for _ in range(30)])
        after = await publish(publisher, 50)
        for tail in tails:
            await tail.received(130)
            assert tail.ids == await log_ids(owner)
            assert set(tail.ids) == {*before, *unannounced, *after}
            assert tail.in_order_once()
        assert one.feed.holes_filled >= 1 and two.feed.holes_filled >= 1
        for tail in tails:
            await tail.close()


async def test_an_unannounced_last_append_arrives_through_the_head_poll(service_env, database):
    config = load_config(env={**service_env, "AUDIT_TAIL_POLL_SECONDS": "0.2"})
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest())
        await tail.caught_up()
        unannounced = await store_events(database, [make_event() for _ in range(25)])
        await tail.received(25)
        assert tail.ids == unannounced
        await tail.close()


@pytest.fixture
def own_nats(tmp_path: Path):
    """A NATS server of this test alone, so that it can be restarted."""
    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    yield server
    server.stop()


async def test_restarting_nats_loses_nothing_on_two_replicas(service_env, own_nats, start_worker, owner):
    env = {**service_env, "AUDIT_NATS_URL": own_nats.url, "AUDIT_TAIL_POLL_SECONDS": "0.5"}
    config = load_config(env=env)
    await start_worker(config)
    async with (
        connect_publisher(own_nats.url, subject_prefix=config.nats.events_subject_prefix) as publisher,
        serving_api(config) as one,
        serving_api(config) as two,
    ):
        tails = [Reader.on_port(server.port, pb.TailEventsRequest(after_position=0)) for server in (one, two)]
        ids = await publish(publisher, 200)
        for tail in tails:
            await tail.received(200)

        own_nats.kill()  # announcements in flight and during the outage are lost
        own_nats.start()

        async def publish_again() -> list[str]:
            while True:  # until every client has reconnected
                try:
                    return await publish(publisher, 1)
                except PublishError:
                    await asyncio.sleep(0.2)

        ids += await publish_again()
        ids += await publish(publisher, 300)
        for tail in tails:
            await tail.received(len(ids))
            assert tail.ids == await log_ids(owner)
            assert set(tail.ids) == set(ids)
            await tail.close()


async def test_the_client_iterator_continues_without_gap_or_repeat_across_api_kill_and_restart(
    api_process, start_worker, publisher, owner
):
    api = api_process()
    await api.start().ready()
    await start_worker()
    received: list[str] = []
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{api.process.args and api.env['AUDIT_GRPC_ADDRESS'].split(':')[1]}"
    ) as channel:
        tail = tail_events(
            channel, pb.EventFilter(tenant="acme"), after_position=0, initial_backoff=0.05, max_backoff=0.5
        )

        async def consume() -> None:
            async for event in tail:
                received.append(event.event_id)

        consuming = asyncio.create_task(consume())
        ids = await publish(publisher, 300)
        await publish(publisher, 50, tenant="globex")
        await eventually(lambda: _has(received, 300), what="the first events")

        api.kill()  # kill -9 mid-stream
        ids += await publish(publisher, 300)  # committed while no API runs
        await api.start().ready()
        ids += await publish(publisher, 300)
        await eventually(lambda: _has(received, 900), what="the events after the kill")

        assert await api.terminate() == 0  # a graceful stop ends the stream with UNAVAILABLE
        ids += await publish(publisher, 100)
        await api.start().ready()
        await eventually(lambda: _has(received, 1000), what="the events after the graceful restart")

        assert received == await log_ids(owner)
        assert set(received) == set(ids)
        assert tail.reconnects >= 2
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)


async def _has(received: list[str], count: int) -> bool:
    return len(received) >= count


async def publish_paced(publisher, count: int, per_second: int) -> tuple[list[str], dict[str, float]]:
    """Publishes at a steady rate (in ticks of 50 ms); returns the ids in publish order and when each was sent."""
    ids: list[str] = []
    sent_at: dict[str, float] = {}
    per_tick = per_second // 20
    next_tick = time.monotonic()
    while len(ids) < count:
        now = time.time()
        acks = await asyncio.gather(*(publisher.publish(make_event()) for _ in range(min(per_tick, count - len(ids)))))
        for ack in acks:
            ids.append(ack.event_id)
            sent_at[ack.event_id] = now
        next_tick += 0.05
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
    return ids, sent_at


async def test_a_stalled_subscriber_is_bounded_and_resumes_without_loss_while_20_others_keep_up(
    api_process, spawn_worker, publisher, owner
):
    api = api_process(AUDIT_TAIL_BUFFER_EVENTS="2000")
    await api.start().ready()
    worker = spawn_worker()
    await worker.ready()
    port = int(api.env["AUDIT_GRPC_ADDRESS"].rsplit(":", 1)[1])
    stalled = Reader.on_port(port, pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme")))
    others = [Reader.on_port(port, pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"))) for _ in range(20)]
    for tail in (stalled, *others):
        await tail.caught_up()
    stalled.pause()  # this client stops reading: gRPC flow control soon stalls the server's writes
    rss_before = api.rss_bytes()
    rss_peak = rss_before

    async def sample_rss() -> None:
        nonlocal rss_peak
        while True:
            rss_peak = max(rss_peak, api.rss_bytes())
            await asyncio.sleep(0.2)

    sampling = asyncio.create_task(sample_rss())
    ids, sent_at = await publish_paced(publisher, 50_000, per_second=1_000)
    for tail in others:
        await tail.received(50_000, within=180)
    sampling.cancel()
    stalled_count = len(stalled.ids)
    assert stalled_count < 50_000, "the stalled subscriber had not received everything while the others had"

    latencies = sorted(tail.received_at[i] - sent_at[i] for tail in others for i in ids)
    print(
        f"\n20 readers at 1,000 events/s while one is stalled: publish-to-received p50 "
        f"{statistics.median(latencies) * 1000:.0f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms; "
        f"API RSS {rss_before / 2**20:.0f} MiB before, {rss_peak / 2**20:.0f} MiB at most; the stalled stream "
        f"had {stalled_count} events"
    )
    in_log = await log_ids(owner)
    assert set(in_log) == set(ids)
    for tail in others:
        assert_same_sequence(tail.ids, in_log, "a reader that kept up")

    stalled.resume()
    await stalled.received(50_000, within=120)
    assert_same_sequence(stalled.ids, in_log, "the stalled reader")
    assert stalled.in_order_once()
    assert sum(response.caught_up for response in stalled.responses) >= 2, "it fell back to the log and caught up"
    # Holding 50k events (~50 MB as messages) for the stalled stream would show; its buffer is 2,000 events.
    assert rss_peak - rss_before < 100 * 2**20
    for tail in (stalled, *others):
        await tail.close()


async def test_the_client_iterator_started_now_misses_nothing_committed_before_the_api_answers(
    api_process, database, owner
):
    api = api_process()
    async with grpc.aio.insecure_channel(api.env["AUDIT_GRPC_ADDRESS"]) as channel:
        tail = tail_events(channel, initial_backoff=0.05, max_backoff=0.2)  # from now, while no API runs
        received: list[str] = []

        async def consume() -> None:
            async for event in tail:
                received.append(event.event_id)

        consuming = asyncio.create_task(consume())
        await asyncio.sleep(0.5)  # the first attempt fails: nothing listens yet
        committed_meanwhile = await store_events(database, [make_event() for _ in range(5)])
        await api.start().ready()
        await eventually(lambda: _has(received, 5), what="the events committed before the API answered")
        assert received == committed_meanwhile
        assert tail.reconnects >= 1
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)


async def test_announcements_heard_while_the_replicas_database_is_away_are_read_once_it_is_back(
    service_env, config, database, database_outage, start_worker, publisher, owner
):
    """The worker still commits (it connects as another role) and announces; the replica cannot check the
    announcements against the log: it delivers none of them, tells no client a traceback, and once the database is
    back its tails get every event once, in order, without having to reconnect."""
    await start_worker(load_config(env={**service_env, "AUDIT_DATABASE_URL": database.owner_url}))
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest(after_position=0))
        await tail.caught_up()
        before = await publish(publisher, 5)
        await tail.received(5)
        async with database_outage():
            during = await publish(publisher, 20)
            await eventually(lambda: _stored(owner, 25), what="the worker commits and announces")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = audit_service_pb2_grpc.AuditServiceStub(channel)
                for call in (
                    stub.ListEvents(pb.ListEventsRequest()),
                    stub.VerifyChain(pb.VerifyChainRequest()),
                    stub.ListResourceHistory(
                        pb.ListResourceHistoryRequest(tenant="acme", resource_type="api_key", resource_id="key-1")
                    ),
                    _first(stub.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV))),
                    _first(stub.TailEvents(pb.TailEventsRequest(after_position=0))),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
                    assert "Traceback" not in refused.value.details()
            assert len(tail.ids) == 5, "delivered from announcements the replica could not check"
        after = await publish(publisher, 5)
        await tail.received(30)
        assert tail.ids == before + during + after == await log_ids(owner)
        assert tail.error is None
        await tail.close()


async def _stored(owner, count: int) -> bool:
    return await owner.fetchval("SELECT count(*) FROM audit_events") >= count


async def _first(call):
    async for response in call:
        return response
    return None
