"""Crashes, restarts and concurrency of real worker processes (`audit-service ingest`), tested not assumed."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest
from audit_service.ingest.streams import provision
from audit_service.store.verify import verify_log

from ..conftest import eventually
from ..factories import make_event

pytestmark = pytest.mark.slow


async def count(owner) -> int:
    return await owner.fetchval("SELECT count(*) FROM audit_events")


async def assert_exactly_once(owner, expected_ids: set[str]) -> None:
    rows = await owner.fetch("SELECT event_id::text AS id, position FROM audit_events ORDER BY position")
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "no event is stored twice"
    assert set(ids) == expected_ids, "every acknowledged event is stored"
    assert [row["position"] for row in rows] == list(range(1, len(rows) + 1)), "gapless positions"
    report = await verify_log(owner)
    assert report.ok, report.first_break


async def publish_all(publisher, n: int, *, concurrency: int = 50) -> set[str]:
    ids: set[str] = set()
    queue = iter(range(n))

    async def produce() -> None:
        for i in queue:
            ids.add((await publisher.publish(make_event(tenant=f"tenant-{i % 5}"))).event_id)

    await asyncio.gather(*(produce() for _ in range(concurrency)))
    return ids


async def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(publisher, spawn_worker, owner):
    first = spawn_worker(AUDIT_INGEST_BATCH_SIZE="100")
    await first.ready()
    publishing = asyncio.create_task(publish_all(publisher, 4000, concurrency=20))
    await eventually(lambda: _at_least(owner, 800), what="some events stored before the crash")
    first.kill()  # SIGKILL: no chance to finish the batch in hand
    stored_at_crash = await count(owner)
    ids = await publishing
    assert stored_at_crash < 4000, "the crash happened mid-stream"

    second = spawn_worker(AUDIT_INGEST_BATCH_SIZE="100")
    await second.ready()
    await eventually(lambda: _at_least(owner, 4000), within=120, what="all 4000 events stored after restart")
    await asyncio.sleep(2.5)  # past ack_wait: any redelivery of the crashed batch has arrived by now
    assert await second.terminate() == 0
    await assert_exactly_once(owner, ids)


async def test_two_workers_commit_in_position_order_so_a_polling_reader_never_skips(publisher, spawn_worker, owner):
    workers = [spawn_worker(AUDIT_INGEST_BATCH_SIZE="50"), spawn_worker(AUDIT_INGEST_BATCH_SIZE="50")]
    for worker in workers:
        await worker.ready()
    total = 6000
    publishing = asyncio.create_task(publish_all(publisher, total))

    # A reader that trusts `position > last`: if a lower position ever became visible after a higher one,
    # it would never see it.
    read: list[int] = []
    last = 0
    while len(read) < total:
        rows = await owner.fetch("SELECT position FROM audit_events WHERE position > $1 ORDER BY position", last)
        if rows:
            read.extend(row["position"] for row in rows)
            last = read[-1]
        else:
            await asyncio.sleep(0.005)
        assert not publishing.done() or publishing.exception() is None
    ids = await publishing

    exit_codes = [await worker.terminate() for worker in workers]
    assert exit_codes == [0, 0]
    assert read == list(range(1, total + 1)), "the reader saw every position, in order, none skipped"
    appended = [_appended(worker.output()) for worker in workers]
    assert all(n > 0 for n in appended) and sum(appended) == total, f"both workers ingested: {appended}"
    await assert_exactly_once(owner, ids)


async def test_sigterm_finishes_commits_and_acks_the_batch_in_hand(
    publisher, spawn_worker, owner, nc, config, database
):
    await provision(nc.jetstream(), config.nats, config.ingest)  # what the worker does first
    ids = await publish_all(publisher, 3000)
    # The worker's first append waits for a lock held here when the signal comes, so the stop finds batches in
    # hand whatever the machine's pace: waiting for a first commit, then signalling, once let a fast worker drain
    # all 3000 in between (CI, 2026-12-07).
    blocker = await asyncpg.connect(database.owner_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE audit_events IN SHARE MODE")
            worker = spawn_worker(AUDIT_INGEST_BATCH_SIZE="500")
            await worker.ready()
            await eventually(lambda: _append_waiting_for_a_lock(owner, database), what="the first append waiting")
            worker.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # its event loop is idle, waiting for PostgreSQL: the signal is seen at once
    finally:
        await blocker.close()
    assert await asyncio.to_thread(worker.process.wait, 60) == 0
    info = await nc.jetstream().consumer_info(config.nats.events_stream, config.ingest.durable)
    stored = await count(owner)
    assert info.num_ack_pending == 0, "nothing fetched was left unacknowledged"
    assert info.ack_floor.stream_seq == stored, "exactly the committed events were acknowledged"
    assert stored < 3000, "the worker stopped before the end of the stream"

    rest = spawn_worker()
    await rest.ready()
    await eventually(lambda: _at_least(owner, 3000), what="the rest ingested by the next worker")
    assert await rest.terminate() == 0
    await assert_exactly_once(owner, ids)


async def _append_waiting_for_a_lock(owner, database) -> bool:
    return await owner.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = $1 AND usename <> current_user"
        " AND wait_event_type = 'Lock'",
        database.name,
    )


async def _at_least(owner, n: int) -> bool:
    return await count(owner) >= n


def _appended(output: str) -> int:
    for line in output.splitlines():
        if "ingest worker stopped:" in line:
            return int(line.split("ingest worker stopped:")[1].split("appended")[0])
    raise AssertionError(f"worker did not report on shutdown:\n{output}")
