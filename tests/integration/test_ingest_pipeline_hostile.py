"""The ingest pipeline attacked (store/append.py's one-statement reads and writes, the worker's batches decoded
ahead, the lean pool reset, the search index merge beside the appends): stops, crashes and outages while several
batches are in hand and one is mid-append, a batch retried while later ones wait, duplicates across pipelined
batches and across two workers, resource streams across batches, values at the limits in bytes and in 4-byte
UTF-8, and a merge that fails. Whatever happens, every published event is in the log exactly once, positions are
gapless, the chains verify and the projections are what a rebuild computes.

The pipeline is filled without timing: a superuser holds the log head's row lock, so the first append waits
under it (mid-transaction) while the worker fetches and decodes the next batches; the test waits until JetStream
counts them delivered and unacknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from audit_client import Limits
from audit_service.config import Config
from audit_service.core.masking import MASK
from audit_service.ingest import worker as worker_module
from audit_service.ingest.streams import provision
from audit_service.ingest.worker import _BATCHES_AHEAD
from audit_service.store import migrate as migrations_module
from audit_service.store.projections import rebuild_projections
from audit_service.store.search_index import SearchIndexMerger
from audit_service.store.verify import verify_log

from ..conftest import APP_ROLE, eventually
from ..factories import make_event

COUNT_ROWS = "SELECT * FROM audit_counts_hourly ORDER BY tenant, hour, action, resource_type, outcome, actor_type"
ACTION_COUNT_ROWS = "SELECT * FROM audit_action_counts_hourly ORDER BY tenant, hour"
STREAM_ROWS = "SELECT * FROM audit_resource_heads ORDER BY tenant, resource_type, resource_id"
IN_HAND_BATCHES = 2 + _BATCHES_AHEAD
"""Batches a worker holds at least, unacknowledged, while its append waits: the one being appended, the ones
decoded ahead, and the one whose decoding made it wait (the pull reader may buffer one more)."""


# --- helpers --------------------------------------------------------------------------------------------------


class HeadHolder:
    """A superuser transaction holding the log head's row lock: every append waits for it, mid-transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._transaction = conn.transaction()

    async def take(self) -> None:
        await self._transaction.start()
        await self._conn.execute("SELECT 1 FROM audit_log_head FOR UPDATE")

    async def release(self) -> None:
        if not self._conn.is_closed():
            await self._conn.close()  # ends the transaction, whatever state it is in


@contextlib.asynccontextmanager
async def holding_the_log_head(database) -> AsyncIterator[HeadHolder]:
    holder = HeadHolder(await asyncpg.connect(database.owner_url))
    try:
        await holder.take()
        yield holder
    finally:
        await holder.release()


def with_batch_size(config: Config, batch_size: int, **ingest: object) -> Config:
    return dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, batch_size=batch_size, **ingest))


async def provisioned(config: Config, nc, batch_size: int, **ingest: object):
    """A worker's configuration with this batch size (and ingest settings), and JetStream with its streams and
    consumer in place, so that what is published before the worker starts waits as a backlog."""
    worker_config = with_batch_size(config, batch_size, **ingest)
    js = nc.jetstream()
    await provision(js, worker_config.nats, worker_config.ingest)
    return worker_config, js


async def consumer(js, config: Config):
    return await js.consumer_info(config.nats.events_stream, config.ingest.durable)


async def stored_count(owner) -> int:
    return await owner.fetchval("SELECT count(*) FROM audit_events")


async def appends_waiting_on_a_lock(owner) -> int:
    return await owner.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1 "
        "AND wait_event_type = 'Lock'",
        APP_ROLE,
    )


async def pipeline_full(owner, js, config: Config, batch_size: int, *, published: int | None = None) -> bool:
    """An append waits under the lock while the next batches are in hand: fetched, decoded and unacknowledged
    (as many as the pipeline holds, or every message `published` when they are fewer). Batches can be short: a
    delivery split across socket reads is handed out in parts, so a full pipeline may hold fewer messages; then the
    worker has stopped asking for more (no pull request waits) while more wait in the stream."""
    info = await consumer(js, config)
    in_hand = IN_HAND_BATCHES * batch_size if published is None else min(published, IN_HAND_BATCHES * batch_size)
    stopped_pulling = info.num_waiting == 0 and info.num_pending > 0 and info.num_ack_pending >= 2 * batch_size
    return (info.num_ack_pending >= in_hand or stopped_pulling) and await appends_waiting_on_a_lock(owner) >= 1


async def drained(js, config: Config, published: int) -> bool:
    info = await consumer(js, config)
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq == published


async def dead_letters(js, config: Config) -> list:
    info = await js.stream_info(config.nats.dead_stream)
    if info.state.messages == 0:
        return []
    return [
        await js.get_msg(config.nats.dead_stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def assert_exactly_once(owner, expected_ids: Iterable[str]) -> None:
    """Every expected event stored once, nothing else; positions gapless up to the head; chains verify."""
    expected = set(expected_ids)
    rows = await owner.fetch("SELECT event_id::text AS id, position FROM audit_events ORDER BY position")
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "no event stored twice"
    assert set(ids) == expected, f"missing {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"
    assert [row["position"] for row in rows] == list(range(1, len(rows) + 1)), "gapless positions"
    assert await owner.fetchval("SELECT last_position FROM audit_log_head") == len(rows)
    registered = await owner.fetchval("SELECT count(*) FROM audit_event_ids")
    assert registered == len(rows), "one registered id per stored event"
    report = await verify_log(owner)
    assert report.ok, report.first_break
    assert report.checked == len(rows)


async def projection_rows(owner) -> list[list[tuple]]:
    return [[tuple(row) for row in await owner.fetch(query)] for query in (COUNT_ROWS, ACTION_COUNT_ROWS, STREAM_ROWS)]


async def assert_projections_are_what_a_rebuild_computes(owner) -> None:
    online = await projection_rows(owner)
    await rebuild_projections(owner)
    rebuilt = await projection_rows(owner)
    for name, kept, recomputed in zip(("counts", "action counts", "resource heads"), online, rebuilt, strict=True):
        assert kept == recomputed, f"the {name} kept online differ from the rebuild"


def prepared(publisher, event: event_pb2.AuditEvent) -> event_pb2.AuditEvent:
    """The event completed as the publisher sends it (event_id, occurred_at)."""
    return publisher.prepare(event)[0]


async def publish_raw(js, config: Config, event: event_pb2.AuditEvent, msg_id: str) -> None:
    """Publishes a completed event as any NATS producer may, under a message id of its choosing."""
    subject = f"{config.nats.events_subject_prefix}.{event.tenant}"
    await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": msg_id})


def many_tenants(n: int) -> list[event_pb2.AuditEvent]:
    return [make_event(tenant=f"tenant-{i % 3}") for i in range(n)]


# --- stops and crashes with the pipeline full -----------------------------------------------------------------


async def test_an_in_process_stop_with_batches_decoded_ahead_and_one_mid_append_finishes_them_all(
    database, config, start_worker, publisher, nc, owner
):
    batch = 25
    worker_config, js = await provisioned(config, nc, batch)
    acks = await publisher.publish_many(many_tenants(400))

    async with holding_the_log_head(database) as head:
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        in_hand = (await consumer(js, worker_config)).num_ack_pending
        running.stop.set()
        await head.release()
        stopped = await asyncio.wait_for(running.task, 60)

    info = await consumer(js, worker_config)
    stored = await stored_count(owner)
    assert info.num_ack_pending == 0, "nothing fetched was left unacknowledged"
    assert info.ack_floor.stream_seq == stored, "exactly the committed events were acknowledged, in order"
    assert stored >= in_hand, "the batches in hand when stopped were committed, not dropped"
    assert stored < 400, "stopped before the end of the stream"
    assert (stopped.stats.appended, stopped.stats.duplicates, stopped.stats.dead_lettered) == (stored, 0, 0)

    rest = await start_worker(worker_config)
    await eventually(lambda: drained(js, worker_config, 400), what="the rest ingested by the next worker")
    await rest.shutdown()
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    await assert_projections_are_what_a_rebuild_computes(owner)
    assert await dead_letters(js, worker_config) == []


@pytest.mark.slow
async def test_sigterm_with_batches_decoded_ahead_and_one_mid_append_commits_and_acks_them_all(
    database, config, spawn_worker, publisher, nc, owner
):
    batch = 25
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    acks = await publisher.publish_many(many_tenants(400))

    async with holding_the_log_head(database) as head:
        worker = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
        await worker.ready()
        await eventually(lambda: pipeline_full(owner, js, config, batch), what="batches in hand, one waiting")
        in_hand = (await consumer(js, config)).num_ack_pending
        worker.process.send_signal(signal.SIGTERM)
        await head.release()
        assert await asyncio.to_thread(worker.process.wait, 60) == 0, worker.output()

    info = await consumer(js, config)
    stored = await stored_count(owner)
    assert info.num_ack_pending == 0, "nothing fetched was left unacknowledged"
    assert info.ack_floor.stream_seq == stored, "exactly the committed events were acknowledged, in order"
    assert stored >= in_hand, "the batches in hand when signalled were committed, not dropped"
    assert f"ingest worker stopped: {stored} appended, 0 duplicates, 0 dead-lettered" in worker.output()

    rest = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
    await rest.ready()
    await eventually(lambda: drained(js, config, 400), what="the rest ingested by the next worker")
    assert await rest.terminate() == 0
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    await assert_projections_are_what_a_rebuild_computes(owner)


@pytest.mark.slow
async def test_kill_9_with_batches_decoded_ahead_and_one_mid_append_then_restart_stores_each_once(
    database, config, spawn_worker, publisher, nc, owner
):
    batch = 25
    js = nc.jetstream()
    earlier = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
    await earlier.ready()
    before = await publisher.publish_many(many_tenants(100))
    await eventually(lambda: drained(js, config, 100), what="the first events stored")
    assert await earlier.terminate() == 0

    # Published before the worker starts, so that it fetches whole batches.
    async with holding_the_log_head(database) as head:
        during = await publisher.publish_many(many_tenants(500))
        first = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
        await first.ready()
        await eventually(lambda: pipeline_full(owner, js, config, batch), what="batches in hand, one waiting")
        first.kill()  # SIGKILL: no chance to finish anything in hand
        await head.release()
    assert await stored_count(owner) == 100, "nothing in hand was committed"

    second = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
    await second.ready()
    # The killed worker's messages come back after ack_wait; drained means every one of them was acknowledged.
    await eventually(lambda: drained(js, config, 600), within=120, what="everything stored and acknowledged")
    assert await second.terminate() == 0
    await assert_exactly_once(owner, [ack.event_id for ack in [*before, *during]])
    await assert_projections_are_what_a_rebuild_computes(owner)
    assert await dead_letters(js, config) == []


async def _at_least(owner, n: int) -> bool:
    return await stored_count(owner) >= n


async def test_a_batch_retried_after_a_transient_error_keeps_its_place_before_the_batches_decoded_after_it(
    database, config, start_worker, publisher, nc, owner
):
    """Each batch's append waits for the previous batch's: while one is retried (here a serialization failure on
    its first attempt), the batches decoded after it wait, so one worker stores in stream order."""
    await owner.execute(
        """
        CREATE SEQUENCE test_flaky_attempts;
        GRANT USAGE ON SEQUENCE test_flaky_attempts TO audit_service;
        CREATE FUNCTION test_flaky() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.message = 'flaky' AND nextval('test_flaky_attempts') = 1 THEN
                RAISE EXCEPTION 'a transient failure' USING ERRCODE = '40001';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_flaky BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION test_flaky();
        """
    )
    batch = 10
    worker_config, js = await provisioned(config, nc, batch)
    events = many_tenants(60)
    events[3].message = "flaky"  # in the first batch: every other batch in hand waits behind its retry
    for event in events[::7]:  # a resource stream across the batches
        event.tenant, event.resource.id = "tenant-0", "dep-ordered"
    acks = await publisher.publish_many(events)
    async with holding_the_log_head(database) as head:
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        await head.release()
    await eventually(lambda: drained(js, worker_config, len(events)), what="everything stored")
    await running.shutdown()

    assert await owner.fetchval("SELECT last_value FROM test_flaky_attempts") >= 2, "the first attempt failed"
    stored = [row["id"] for row in await owner.fetch("SELECT event_id::text AS id FROM audit_events ORDER BY position")]
    assert stored == [ack.event_id for ack in acks], "positions in stream order"
    revisions = await owner.fetch(
        "SELECT stream_revision FROM audit_events WHERE resource_id = 'dep-ordered' ORDER BY position"
    )
    assert [row["stream_revision"] for row in revisions] == list(range(1, len(events[::7]) + 1))
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    await assert_projections_are_what_a_rebuild_computes(owner)


# --- the database going away with batches in flight -----------------------------------------------------------


async def test_a_database_outage_with_batches_in_flight_loses_doubles_and_wedges_nothing(
    database, config, start_worker, publisher, nc, owner, database_outage, caplog
):
    batch = 25
    worker_config = with_batch_size(config, batch)
    js = nc.jetstream()
    caplog.set_level(logging.WARNING, logger="audit_service")
    earlier = await start_worker(worker_config)
    before = await publisher.publish_many(many_tenants(50))
    await eventually(lambda: drained(js, worker_config, 50), what="the first events stored")
    await earlier.shutdown()

    # Published before the worker starts, so that it fetches whole batches.
    async with holding_the_log_head(database) as head:
        during = await publisher.publish_many(many_tenants(400))
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        async with database_outage():  # drops the append waiting under the lock, refuses the retries
            await head.release()
            await eventually(lambda: _logged(caplog, "append of"), what="the worker retrying its append")
    await eventually(lambda: drained(js, worker_config, 450), what="everything stored after the outage")

    after = await publisher.publish(make_event())  # the consumer is not stuck
    await eventually(lambda: drained(js, worker_config, 451), what="an event published after the outage stored")
    stopped = await running.shutdown()
    await assert_exactly_once(owner, [ack.event_id for ack in [*before, *during, after]])
    await assert_projections_are_what_a_rebuild_computes(owner)
    assert await dead_letters(js, worker_config) == [], "an outage is not the events' fault"
    assert stopped.stats.appended == 401
    assert "current transaction is aborted" not in caplog.text


async def test_stopping_during_an_outage_with_batches_in_hand_hands_them_all_back(
    database, config, start_worker, publisher, nc, owner, database_outage
):
    batch = 25
    worker_config, js = await provisioned(config, nc, batch)
    acks = await publisher.publish_many(many_tenants(300))
    async with holding_the_log_head(database) as head:
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        async with database_outage():
            await head.release()
            stopped = await asyncio.wait_for(running.shutdown(), 30)  # it must not wait for the database
            info = await consumer(js, worker_config)
    assert stopped.stats.appended == 0
    assert info.ack_floor.stream_seq == 0, "nothing acknowledged: nothing was committed"

    rest = await start_worker(worker_config)
    await eventually(lambda: drained(js, worker_config, 300), what="the handed-back events stored by the next worker")
    await rest.shutdown()
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    await assert_projections_are_what_a_rebuild_computes(owner)
    assert await dead_letters(js, worker_config) == []


async def test_appends_refused_by_lock_timeouts_reuse_their_pooled_connections_cleanly(
    database, config, start_worker, publisher, nc, owner, caplog
):
    """Each attempt fails mid-transaction (lock_timeout, waiting for the head) and its connection goes back to the
    ingest pool, which skips the reset statement: the next attempt on it must not find a transaction aborted."""
    await owner.execute(f"ALTER ROLE {APP_ROLE} IN DATABASE \"{database.name}\" SET lock_timeout = '200ms'")
    batch = 25
    worker_config = with_batch_size(config, batch)
    js = nc.jetstream()
    caplog.set_level(logging.WARNING, logger="audit_service")
    async with holding_the_log_head(database):
        running = await start_worker(worker_config)
        acks = await publisher.publish_many(many_tenants(200))
        await eventually(lambda: _logged_times(caplog, "LockNotAvailableError", 3), what="three attempts refused")
    await eventually(lambda: drained(js, worker_config, 200), what="everything stored once the head is free")
    await running.shutdown()
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    assert await dead_letters(js, worker_config) == []
    assert "current transaction is aborted" not in caplog.text
    assert "InFailedSQLTransaction" not in caplog.text


async def _logged(caplog, text: str) -> bool:
    return text in caplog.text


async def _logged_times(caplog, text: str, times: int) -> bool:
    return caplog.text.count(text) >= times


# --- duplicates across pipelined batches ----------------------------------------------------------------------


async def test_copies_and_conflicts_of_an_event_across_pipelined_batches_are_stored_once_and_dead_lettered(
    database, config, start_worker, publisher, nc, owner
):
    batch = 10
    worker_config, js = await provisioned(config, nc, batch)
    fillers = [prepared(publisher, make_event(tenant=("acme", "globex")[i % 2])) for i in range(60)]
    x, y, z = (prepared(publisher, make_event(tenant="acme", action="secret.read")) for _ in range(3))
    x_other, z_other = event_pb2.AuditEvent(), event_pb2.AuditEvent()
    x_other.CopyFrom(x)
    x_other.message = "another event under x's id"
    z_other.CopyFrom(z)
    z_other.outcome = event_pb2.OUTCOME_DENIED
    # A resource's update whose change.before the service fills: its copies hold none, and are no conflict.
    created, updated = (make_event(tenant="acme", action="deployment.update") for _ in range(2))
    for n, event in enumerate((created, updated)):
        event.resource.CopyFrom(event_pb2.Resource(type="deployment", id="dep-dup"))
        event.ClearField("change")
        event.change.after.update({"replicas": n + 1, "password": "hunter2"})
    created, updated = prepared(publisher, created), prepared(publisher, updated)
    # Stream order. With batches of 10 behind an append that waits, the first four are in hand at once: x's first
    # copy and its conflict open the batch after x's, y's copy and z's conflict share the batch of the originals,
    # the update's copies come in its batch and the next, x's last copy several batches later.
    order: list[tuple[event_pb2.AuditEvent, str]] = [(event, event.event_id) for event in fillers[:9]]
    order += [(x, x.event_id)]  # 10: the last of the first batch
    order += [(x, "x-copy-1"), (x_other, "x-conflict")]  # 11, 12: the first of the second batch
    order += [(created, created.event_id), (updated, updated.event_id), (updated, "update-copy-1")]  # 13-15
    order += [(event, event.event_id) for event in fillers[9:15]]  # 16-21
    order += [(updated, "update-copy-2")]  # 22: the third batch
    order += [(event, event.event_id) for event in fillers[15:23]]  # 23-30
    order += [(y, y.event_id), (y, "y-copy"), (z, z.event_id), (z_other, "z-conflict")]  # 31-34: one batch
    order += [(event, event.event_id) for event in fillers[23:]]  # 35-71
    order += [(x, "x-copy-2")]  # 72
    for event, msg_id in order:
        await publish_raw(js, worker_config, event, msg_id)
    published = len(order)

    async with holding_the_log_head(database) as head:
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        assert (await consumer(js, worker_config)).num_ack_pending >= 34, "the copies in hand at once"
        await head.release()
    await eventually(lambda: drained(js, worker_config, published), what="everything stored or dead-lettered")
    stopped = await running.shutdown()

    expected = [event.event_id for event in [*fillers, x, y, z, created, updated]]
    await assert_exactly_once(owner, expected)
    stored = {
        row["id"]: row
        for row in await owner.fetch("SELECT event_id::text AS id, position, message, outcome FROM audit_events")
    }
    assert stored[x.event_id]["message"] == x.message and stored[z.event_id]["outcome"] == z.outcome
    letters = await dead_letters(js, worker_config)
    assert sorted(letter.headers["Audit-Original-Msg-Id"] for letter in letters) == ["x-conflict", "z-conflict"]
    for letter in letters:
        assert letter.subject == f"{worker_config.nats.dead_subject_prefix}.conflicting_duplicate"
        assert letter.headers["Audit-Dead-Reason"] == "conflicting_duplicate"
    by_msg_id = {letter.headers["Audit-Original-Msg-Id"]: letter for letter in letters}
    x_position, z_position = stored[x.event_id]["position"], stored[z.event_id]["position"]
    assert (
        f"event {x.event_id} is stored at position {x_position}" in by_msg_id["x-conflict"].headers["Audit-Dead-Detail"]
    )
    assert "(differs in message)" in by_msg_id["x-conflict"].headers["Audit-Dead-Detail"]
    assert (
        f"event {z.event_id} is stored at position {z_position}" in by_msg_id["z-conflict"].headers["Audit-Dead-Detail"]
    )
    assert "(differs in outcome)" in by_msg_id["z-conflict"].headers["Audit-Dead-Detail"]
    assert by_msg_id["x-conflict"].data == x_other.SerializeToString()
    assert (stopped.stats.appended, stopped.stats.duplicates, stopped.stats.dead_lettered) == (65, 5, 2)
    before = await owner.fetchval(
        "SELECT change_before::text FROM audit_events WHERE event_id = $1::uuid", updated.event_id
    )
    assert json.loads(before) == {"replicas": 1.0, "password": MASK}, "the update's change.before was filled"
    await assert_projections_are_what_a_rebuild_computes(owner)
    assert await owner.fetchval("SELECT sum(events) FROM audit_counts_hourly") == 65
    assert await owner.fetchval("SELECT sum(events) FROM audit_action_counts_hourly") == 65


async def test_two_pipelined_workers_sharing_copies_conflicts_and_a_stream_store_each_event_once(
    database, config, start_worker, publisher, nc, owner
):
    """Two workers, each with batches in hand, both appends waiting on the head: copies of one event and the
    revisions of one resource are split between them. Revisions follow commit order, each change.before the state
    the previous revision left."""
    batch = 10
    worker_config, js = await provisioned(config, nc, batch)

    def revision(n: int) -> event_pb2.AuditEvent:
        event = make_event(tenant="acme", action="deployment.update")
        event.resource.CopyFrom(event_pb2.Resource(type="deployment", id="dep-shared"))
        event.ClearField("change")
        event.change.after.update({"replicas": n, "password": f"secret-{n}"})
        return prepared(publisher, event)

    originals = [prepared(publisher, make_event(tenant=("acme", "globex")[i % 2])) for i in range(100)]
    updates = [revision(n) for n in range(20)]
    conflicting = event_pb2.AuditEvent()
    conflicting.CopyFrom(originals[3])
    conflicting.message = "not the stored event"
    order: list[tuple[event_pb2.AuditEvent, str]] = []
    for i, event in enumerate(originals):
        order.append((event, event.event_id))
        if i % 5 == 4:
            order.append((updates[i // 5], updates[i // 5].event_id))
        if i >= 12 and i % 4 == 0:  # a copy of an event a batch or so earlier
            order.append((originals[i - 12], f"copy-{i}"))
    order.insert(40, (conflicting, "conflict"))
    for event, msg_id in order:
        await publish_raw(js, worker_config, event, msg_id)

    async with holding_the_log_head(database) as head:
        workers = [await start_worker(worker_config), await start_worker(worker_config)]
        await eventually(lambda: _appends_waiting(owner, 2), what="both workers' appends waiting on the head")
        await head.release()
    await eventually(lambda: drained(js, worker_config, len(order)), what="everything stored or dead-lettered")
    stats = [(await worker.shutdown()).stats for worker in workers]

    await assert_exactly_once(owner, [event.event_id for event in [*originals, *updates]])
    assert all(worker_stats.appended > 0 for worker_stats in stats), f"both workers appended: {stats}"
    assert sum(worker_stats.appended for worker_stats in stats) == 120
    assert sum(worker_stats.duplicates for worker_stats in stats) == sum(1 for _, m in order if m.startswith("copy-"))
    letters = await dead_letters(js, worker_config)
    assert [letter.headers["Audit-Original-Msg-Id"] for letter in letters] == ["conflict"]
    assert letters[0].headers["Audit-Dead-Reason"] == "conflicting_duplicate"

    rows = await owner.fetch(
        "SELECT stream_revision, change_before::text AS before, change_after::text AS after FROM audit_events "
        "WHERE resource_id = 'dep-shared' ORDER BY position"
    )
    assert [row["stream_revision"] for row in rows] == list(range(1, 21))
    afters = [json.loads(row["after"]) for row in rows]
    befores = [None if row["before"] is None else json.loads(row["before"]) for row in rows]
    assert befores == [None, *afters[:-1]], "each change.before is the state the previous revision left"
    assert all(after["password"] == MASK for after in afters)
    await assert_projections_are_what_a_rebuild_computes(owner)


async def _appends_waiting(owner, n: int) -> bool:
    return await appends_waiting_on_a_lock(owner) >= n


async def test_a_batch_mixing_stored_events_and_new_ones_counts_only_the_new_ones(
    database, config, start_worker, publisher, nc, owner
):
    """The counts are computed before the append's transaction as if every event were new, and recomputed when
    some were stored already: a redelivered batch partly committed must not count its old events twice."""
    batch = 20
    worker_config = with_batch_size(config, batch)
    js = nc.jetstream()
    earlier = await start_worker(worker_config)
    first = [prepared(publisher, make_event(tenant="acme")) for _ in range(30)]
    for event in first:
        await publish_raw(js, worker_config, event, event.event_id)
    await eventually(lambda: drained(js, worker_config, 30), what="the first events stored")
    await earlier.shutdown()
    # Every batch now holds copies of stored events (other message ids, as after a producer's retry) among new ones.
    second = [prepared(publisher, make_event(tenant="acme")) for _ in range(30)]
    order = [item for pair in zip(first, second, strict=True) for item in pair]
    async with holding_the_log_head(database) as head:
        for n, event in enumerate(order):
            await publish_raw(js, worker_config, event, f"again-{n}")
        running = await start_worker(worker_config)
        await eventually(
            lambda: pipeline_full(owner, js, worker_config, batch, published=len(order)),
            what="the mixed batches in hand",
        )
        await head.release()
    await eventually(lambda: drained(js, worker_config, 90), what="the mixed batches stored")
    stopped = await running.shutdown()

    await assert_exactly_once(owner, [event.event_id for event in first + second])
    assert (stopped.stats.appended, stopped.stats.duplicates) == (30, 30)
    assert await owner.fetchval("SELECT sum(events) FROM audit_counts_hourly") == 60
    assert await owner.fetchval("SELECT sum(events) FROM audit_action_counts_hourly") == 60
    await assert_projections_are_what_a_rebuild_computes(owner)


# --- resource streams across pipelined batches ----------------------------------------------------------------


async def test_a_resource_changed_in_consecutive_pipelined_batches_gets_consecutive_revisions_and_its_before(
    database, config, start_worker, publisher, nc, owner
):
    """Each batch is presealed while the previous one is stored; the append fills change.before from the state the
    previous batch left (re-presealing the event), so the hashes must still verify."""
    batch = 5
    worker_config = with_batch_size(config, batch)
    js = nc.jetstream()
    earlier = await start_worker(worker_config)

    def deployment(**change) -> event_pb2.AuditEvent:
        event = make_event(tenant="acme", action="deployment.update")
        event.resource.CopyFrom(event_pb2.Resource(type="deployment", id="dep-1", name="web"))
        event.ClearField("change")
        for side, state in change.items():
            getattr(event.change, side).update(state)
        return prepared(publisher, event)

    states = [
        {"image": "web:1", "replicas": 1, "db": {"password": "hunter2"}},
        {"image": "web:2", "replicas": 1, "db": {"password": "hunter2"}},
        {"image": "web:2", "replicas": 3, "token": "tok-1"},
        {"image": "web:3", "replicas": 3, "🔑": "🗝️"},
        {"image": "web:4"},
    ]
    created = deployment(after=states[0])
    await publish_raw(js, worker_config, created, created.event_id)
    await eventually(lambda: drained(js, worker_config, 1), what="the stream's first revision stored")
    await earlier.shutdown()

    def filler() -> event_pb2.AuditEvent:
        return prepared(publisher, make_event(tenant="globex"))

    # Batches of 5: the stream's events fall at the end of one batch and the start of the next, and twice in one.
    f = filler
    batches = [
        [f(), f(), f(), f(), deployment(after=states[1])],  # revision 2: the last of a batch
        [deployment(after=states[2]), f(), f(), f(), f()],  # 3: the first of the next
        [f(), f(), f(), deployment(), deployment(after=states[3])],  # 4: a read, 5: an update, in one batch
        [deployment(before={"image": "web:3"}), f(), f(), f(), f()],  # 6: deleted
        [deployment(after=states[4]), f(), f(), f(), f()],  # 7: created again, from nothing
    ]
    plan = [event for events in batches for event in events]
    stream = [created, *(event for event in plan if event.resource.id == "dep-1")]
    async with holding_the_log_head(database) as head:
        for event in plan:
            await publish_raw(js, worker_config, event, event.event_id)
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="the batches in hand")
        await head.release()
    await eventually(lambda: drained(js, worker_config, 1 + len(plan)), what="the stream stored")
    await running.shutdown()

    rows = await owner.fetch(
        "SELECT event_id::text AS id, stream_revision, change_before::text AS before, change_after::text AS after "
        "FROM audit_events WHERE resource_id = 'dep-1' ORDER BY position"
    )
    assert [row["id"] for row in rows] == [event.event_id for event in stream], "stream order is publish order"
    assert [row["stream_revision"] for row in rows] == [1, 2, 3, 4, 5, 6, 7]

    def loaded(text: str | None) -> dict | None:
        return None if text is None else json.loads(text)

    masked = [
        {"image": "web:1", "replicas": 1.0, "db": {"password": MASK}},
        {"image": "web:2", "replicas": 1.0, "db": {"password": MASK}},
        {"image": "web:2", "replicas": 3.0, "token": MASK},
        {"image": "web:3", "replicas": 3.0, "🔑": "🗝️"},
        {"image": "web:4"},
    ]
    befores = [loaded(row["before"]) for row in rows]
    afters = [loaded(row["after"]) for row in rows]
    assert afters == [masked[0], masked[1], masked[2], None, masked[3], None, masked[4]]
    assert befores == [None, masked[0], masked[1], None, masked[2], {"image": "web:3"}, None], (
        "change.before filled from the previous revision's state (masked), across batches; "
        "not after a deletion; not for an event with no change"
    )
    head_row = await owner.fetchrow(
        "SELECT revision, state::text AS state FROM audit_resource_heads WHERE resource_id = 'dep-1'"
    )
    assert (head_row["revision"], loaded(head_row["state"])) == (7, masked[4])
    await assert_exactly_once(owner, [created.event_id, *(event.event_id for event in plan)])
    await assert_projections_are_what_a_rebuild_computes(owner)


# --- values at the limits, in bytes and in 4-byte UTF-8 --------------------------------------------------------

LIMITS = Limits()
ALPHABETS = {
    "ascii": "abcdefghijklmnopqrstuvwxyz0123456789",
    # Outside the Basic Multilingual Plane: 4 bytes each in UTF-8, surrogate pairs in UTF-16 and in escaped JSON.
    "4-byte": "😀🀄𝄞𐍈🜁🂡𓀀🦄",
}
TEXT_FIELDS = (
    *(f"actor.{name}" for name in ("id", "slug", "display_name", "email", "pat_name", "controller_name")),
    "actor.external_identity_slug",
    *(f"resource.{name}" for name in ("type", "id", "name", "fqn")),
    *(f"parent_resource.{name}" for name in ("type", "id", "name", "fqn")),
    "request.route",
    "request.method",
    "request.user_agent",
    "cluster_id",
    "workspace_id",
)


def text(alphabet: str, size_bytes: int, shift: int = 0) -> str:
    """Exactly `size_bytes` of UTF-8 from `alphabet` (its characters all of one width)."""
    width = len(alphabet[0].encode())
    return "".join(alphabet[(i + shift) % len(alphabet)] for i in range(size_bytes // width))


def _set(event: event_pb2.AuditEvent, path: str, value: str) -> None:
    *parents, name = path.split(".")
    target = event
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)


def at_the_limits(alphabet: str, n: int) -> event_pb2.AuditEvent:
    """Every short text field at its byte limit (the resource's type and id the same for every `n`, so that the
    events share a stream), the message at its character limit, metadata and the change keyed and valued in
    `alphabet`."""
    width = len(alphabet[0].encode())
    event = make_event(tenant="t" + "0123456789" * 6 + "ab", action="A" + "b" * 127)  # 63 and 128 characters
    for shift, path in enumerate(TEXT_FIELDS):
        _set(event, path, text(alphabet, LIMITS.max_text_bytes, shift + n))
    event.resource.type = text(alphabet, LIMITS.max_text_bytes)
    event.resource.id = text(alphabet, LIMITS.max_text_bytes, 1)
    event.message = text(alphabet, LIMITS.max_message_chars * width, n)
    event.metadata.Clear()
    key, value = text(alphabet, 3 * width, n), text(alphabet, 200 * width, n)
    nested: dict = {key: value, "é" + alphabet: [alphabet, 1.5, True, None]}
    for depth in range(LIMITS.max_struct_depth - 4):
        nested = {text(alphabet, width, depth): nested}
    event.metadata.update({alphabet: nested, "n": n})
    event.ClearField("change")
    event.change.after.update(
        {key: text(alphabet, 300 * width, n + 1), "revision": n, alphabet[::-1]: {alphabet: alphabet}}
    )
    return event


@pytest.mark.parametrize("alphabet", sorted(ALPHABETS))
async def test_events_at_the_limits_through_pipelined_batches_read_back_equal_and_verify(
    alphabet, database, config, start_worker, publisher, nc, owner, api
):
    """The canonical content written ahead of the append, spliced with the position, recorded_at and revision,
    must be exactly the full encoding verify recomputes from the stored row; change.before filled from the
    previous revision (re-presealed) as well."""
    batch = 2
    worker_config, js = await provisioned(config, nc, batch)
    events = [prepared(publisher, at_the_limits(ALPHABETS[alphabet], n)) for n in range(7)]
    assert all(event.ByteSize() <= LIMITS.max_event_bytes for event in events)
    async with holding_the_log_head(database) as head:
        for event in events:
            await publish_raw(js, worker_config, event, event.event_id)
        running = await start_worker(worker_config)
        await eventually(
            lambda: pipeline_full(owner, js, worker_config, batch, published=len(events)), what="the batches in hand"
        )
        await head.release()
    await eventually(lambda: drained(js, worker_config, len(events)), what="the events at the limits stored")
    await running.shutdown()
    assert await dead_letters(js, worker_config) == []

    previous_after = None
    for revision, event in enumerate(events, start=1):
        read = (await api.GetEvent(pb.GetEventRequest(event_id=event.event_id))).event
        assert read.stream_revision == revision
        if previous_after is not None:
            assert read.change.before == previous_after, "change.before filled from the previous state"
        previous_after = read.change.after
        expected = event_pb2.AuditEvent()
        expected.CopyFrom(event)
        expected.occurred_at.nanos -= expected.occurred_at.nanos % 1000  # stored in microseconds
        for name in ("position", "recorded_at", "hash", "prev_hash", "stream_revision"):
            read.ClearField(name)
        read.change.ClearField("before")
        assert read == expected, "read back as published"
    await assert_exactly_once(owner, [event.event_id for event in events])
    await assert_projections_are_what_a_rebuild_computes(owner)


# --- the search index merge failing ---------------------------------------------------------------------------

ROUND = 20
"""Events published at a time in these tests, in batches of as many; every append kicks a merge here (the worker
merges every 1,500 events), so that whatever the batches, a merge follows the last append."""


BREAK_MERGE = {
    "revoked": "REVOKE EXECUTE ON FUNCTION audit_clean_search_pending() FROM audit_service",
    "dropped": "DROP FUNCTION audit_clean_search_pending()",
}
MERGE_FAILED = "merging the search index's pending list failed"


async def _pending_tuples(owner) -> int:
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    return await owner.fetchval(
        "SELECT coalesce(sum((pgstatginindex(inhrelid)).pending_tuples), 0) FROM pg_inherits "
        "WHERE inhparent = 'audit_events_search'::regclass"
    )


@pytest.mark.parametrize("how", sorted(BREAK_MERGE))
@pytest.mark.parametrize("when", ["before the worker starts", "after its first merges"])
async def test_the_worker_keeps_ingesting_when_the_merge_fails_with_one_warning(
    how, when, database, config, start_worker, publisher, nc, owner, caplog, monkeypatch
):
    monkeypatch.setattr(worker_module, "SearchIndexMerger", functools.partial(SearchIndexMerger, every_events=1))
    # Appends never merge by themselves here: only the worker's merge empties the pending list.
    await owner.execute(f"ALTER DATABASE \"{database.name}\" SET gin_pending_list_limit = '1GB'")
    worker_config = with_batch_size(config, ROUND)
    js = nc.jetstream()
    caplog.set_level(logging.INFO, logger="audit_service")
    running = await start_worker(worker_config)
    acks = []

    async def publish_and_store(events: int) -> None:
        acks.extend(await publisher.publish_many(many_tenants(events)))
        published = len(acks)
        await eventually(lambda: drained(js, worker_config, published), what=f"{published} events stored")

    if when == "after its first merges":
        await publish_and_store(2 * ROUND)
        await eventually(lambda: _no_pending(owner), what="the first merges done")
    await owner.execute(BREAK_MERGE[how])
    for _ in range(5):  # a merge is tried after each append
        await publish_and_store(ROUND)
    assert await _pending_tuples(owner) > 0, "no merge ran since"
    failures = [record for record in caplog.records if MERGE_FAILED in record.getMessage()]
    assert len(failures) == 1, [record.getMessage() for record in failures]
    assert failures[0].levelno == logging.WARNING

    # Repaired: the merges resume, with one line saying so.
    await owner.execute("DROP FUNCTION IF EXISTS audit_clean_search_pending()")
    await owner.execute(_MIGRATION_0016.read_text())
    await publish_and_store(ROUND)
    await eventually(lambda: _no_pending(owner), what="the pending list merged again")
    stopped = await running.shutdown()
    assert "merging the search index's pending list works again" in caplog.text
    assert len([record for record in caplog.records if MERGE_FAILED in record.getMessage()]) == 1
    assert stopped.stats.appended == len(acks)
    await assert_exactly_once(owner, [ack.event_id for ack in acks])
    assert await dead_letters(js, worker_config) == []


_MIGRATION_0016 = Path(migrations_module.__file__).parent / "migrations" / "0016_search_pending_merge.sql"


async def _no_pending(owner) -> bool:
    return await _pending_tuples(owner) == 0


async def test_batches_in_hand_behind_a_slow_append_are_kept_in_progress_not_redelivered(
    database, config, start_worker, publisher, nc, owner
):
    """An append held up for three times ack_wait (here by a lock, as retention holds the head): the batches decoded
    behind it are reported in progress, so JetStream redelivers nothing and nothing is appended twice."""
    batch = 25
    worker_config, js = await provisioned(config, nc, batch, ack_wait_seconds=2.0)
    acks = await publisher.publish_many(many_tenants(200))

    async with holding_the_log_head(database) as head:
        running = await start_worker(worker_config)
        await eventually(lambda: pipeline_full(owner, js, worker_config, batch), what="batches in hand, one waiting")
        await asyncio.sleep(3 * worker_config.ingest.ack_wait_seconds)  # the append waits three ack_waits
        await head.release()

    await eventually(lambda: drained(js, worker_config, 200), what="everything ingested")
    info = await consumer(js, worker_config)
    stopped = await running.shutdown()
    assert info.num_redelivered == 0
    assert (stopped.stats.appended, stopped.stats.duplicates, stopped.stats.dead_lettered) == (200, 0, 0)
    await assert_exactly_once(owner, [ack.event_id for ack in acks])


async def test_events_trickling_in_behind_a_slow_append_are_stored_by_one_next_append_not_many(
    database, config, start_worker, publisher, nc, owner
):
    """Without a backlog the worker decodes no batch ahead: what arrives while an append waits grows into one next
    batch (at 1,000 events/s, appending a few events at a time behind each other tripled the commit latency)."""
    worker_config = with_batch_size(config, 25)
    await start_worker(worker_config)
    async with holding_the_log_head(database) as head:
        await publisher.publish(make_event("acme"))
        await eventually(lambda: _appends_waiting(owner, 1), what="the first append waiting on the head")
        for _ in range(10):
            await publisher.publish(make_event("acme"))
            await asyncio.sleep(0.05)  # a trickle: each arrives on its own
        await head.release()

    await eventually(lambda: _at_least(owner, 11), what="every event stored")
    appends = await owner.fetchval("SELECT count(DISTINCT recorded_at) FROM audit_events")
    assert appends == 2, f"{appends} appends for 1 event, then 10 that arrived while it waited"
