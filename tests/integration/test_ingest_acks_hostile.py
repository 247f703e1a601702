"""The worker's acks in slices attacked (ingest/worker.py: the next batch's append starts before a batch's acks,
which go out _ACK_SLICE at a time between turns of the event loop): conflicting duplicates at the slice boundaries
are dead-lettered and every other message acknowledged exactly once; a stop while the acks are half sent finishes
them; one worker's commit announcements go out in commit order, and a live tail gets every event once, in order.

Batches are made exact without timing: a superuser holds the log head and a first one-event batch (the plug)
waits under it. A worker whose last batch was not full fetches no next batch until that append is done, so what
is published meanwhile is buffered by its reader, one pull request's worth (a batch), and becomes the next batch
exactly. Every acknowledgement is counted as the NATS server sees it, by a subscriber on $JS.ACK."""

from __future__ import annotations

import collections
import itertools
import signal

from audit.v1 import audit_service_pb2 as pb
from audit.v1 import committed_pb2, event_pb2
from audit_service.ingest.streams import provision
from audit_service.ingest.worker import _ACK_SLICE

from ..conftest import eventually, serving_api
from ..factories import make_event
from ..tail_helpers import Reader, assert_same_sequence
from .test_ingest_pipeline_hostile import (
    appends_waiting_on_a_lock,
    assert_exactly_once,
    assert_projections_are_what_a_rebuild_computes,
    consumer,
    dead_letters,
    drained,
    holding_the_log_head,
    prepared,
    provisioned,
    publish_raw,
    stored_count,
)

# --- helpers --------------------------------------------------------------------------------------------------


class Acks:
    """The acknowledgements of the test's consumer as the server receives them: stream sequence -> how many."""

    def __init__(self) -> None:
        self.by_sequence: collections.Counter[int] = collections.Counter()
        self.other: list[bytes] = []

    async def handle(self, msg) -> None:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
        tokens = msg.subject.split(".")
        assert len(tokens) == 9, msg.subject
        if msg.data in (b"", b"+ACK"):
            self.by_sequence[int(tokens[5])] += 1
        elif msg.data != b"+WPI":  # in progress: the worker keeping what it holds
            self.other.append(msg.data)  # a nak or a term: nothing here should be refused or handed back


async def counting_acks(nc, config) -> Acks:
    acks = Acks()
    await nc.subscribe(f"$JS.ACK.{config.nats.events_stream}.{config.ingest.durable}.>", cb=acks.handle)
    await nc.flush()
    return acks


async def assert_each_acknowledged_once(nc, acks: Acks, published: int) -> None:
    await nc.flush()
    await eventually(lambda: _all_counted(acks, published), what="every ack seen by the counting subscriber")
    twice = {sequence: n for sequence, n in acks.by_sequence.items() if n != 1}
    assert not twice, f"stream sequences acknowledged more than once: {twice}"
    assert sorted(acks.by_sequence) == list(range(1, published + 1)), "every message acknowledged"
    assert acks.other == [], "nothing nak'ed or terminated"


async def _all_counted(acks: Acks, published: int) -> bool:
    return len(acks.by_sequence) >= published


class Announcements:
    """The commit announcements of the test's prefix, as (prev_position, last_position), in arrival order."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, int]] = []

    async def handle(self, msg) -> None:
        part = committed_pb2.CommittedBatch.FromString(msg.data)
        self.parts.append((part.prev_position, part.last_position))

    def appends(self) -> list[tuple[int, int]]:
        """One entry per append (its parts, one per tenant, share its positions), in the order first heard."""
        seen: list[tuple[int, int]] = []
        for part in self.parts:
            if part not in seen:
                seen.append(part)
        return seen


async def _in_hand(js, config, n: int) -> bool:
    return (await consumer(js, config)).num_ack_pending == n


async def _waiting(owner) -> bool:
    return await appends_waiting_on_a_lock(owner) >= 1


async def _heard(heard: Announcements, last: int) -> bool:
    return any(part[1] == last for part in heard.parts)


# --- conflicts at the slice boundaries ------------------------------------------------------------------------


def _other(event: event_pb2.AuditEvent, message: str) -> event_pb2.AuditEvent:
    other = event_pb2.AuditEvent()
    other.CopyFrom(event)
    other.message = message
    return other


async def test_conflicts_at_the_ack_slice_boundaries_are_dead_lettered_and_every_other_message_acked_once(
    database, config, start_worker, publisher, nc, owner
):
    batch = 3 * _ACK_SLICE + 8
    worker_config, js = await provisioned(config, nc, batch)
    acks = await counting_acks(nc, worker_config)
    running = await start_worker(worker_config)
    stored_before = [prepared(publisher, make_event(tenant=("acme", "globex")[i % 2])) for i in range(4)]
    for event in stored_before:
        await publish_raw(js, worker_config, event, event.event_id)
    await eventually(lambda: drained(js, worker_config, 4), what="the events the batch will conflict with stored")

    fresh = [prepared(publisher, make_event(tenant=("acme", "globex")[i % 2])) for i in range(batch)]
    slots: dict[int, tuple[event_pb2.AuditEvent, str]] = {
        _ACK_SLICE - 2: (stored_before[0], "copy-62"),  # the same event again: a duplicate, acknowledged
        _ACK_SLICE - 1: (_other(stored_before[0], "conflict"), "conflict-63"),  # the last of the first slice
        _ACK_SLICE: (_other(stored_before[1], "conflict"), "conflict-64"),  # the first of the second
        2 * _ACK_SLICE - 2: (stored_before[1], "copy-126"),
        2 * _ACK_SLICE - 1: (_other(stored_before[2], "conflict"), "conflict-127"),
        2 * _ACK_SLICE: (_other(fresh[5], "conflict within the batch"), "conflict-128"),  # fresh[5]: index 5
        3 * _ACK_SLICE - 1: (_other(stored_before[3], "conflict"), "conflict-191"),
        batch - 1: (_other(fresh[0], "conflict within the batch"), "conflict-last"),
    }
    order = [slots.get(index, (event, event.event_id)) for index, event in enumerate(fresh)]
    new_in_batch = [event for index, event in enumerate(fresh) if index not in slots]
    after = [prepared(publisher, make_event()) for _ in range(2 * batch + 5)]  # batches appended behind it
    async with holding_the_log_head(database) as head:
        plug = prepared(publisher, make_event())
        await publish_raw(js, worker_config, plug, plug.event_id)
        await eventually(lambda: _waiting(owner), what="the plug's append waiting on the head")
        for event, msg_id in order:
            await publish_raw(js, worker_config, event, msg_id)
        await eventually(lambda: _in_hand(js, worker_config, 1 + batch), what="the batch buffered whole")
        for event in after:
            await publish_raw(js, worker_config, event, event.event_id)
        await head.release()
    published = 4 + 1 + batch + len(after)
    await eventually(lambda: drained(js, worker_config, published), what="everything stored or dead-lettered")
    stopped = await running.shutdown()

    appended_together = await owner.fetchval(
        "SELECT count(*) FROM audit_events WHERE recorded_at = "
        "(SELECT recorded_at FROM audit_events WHERE event_id = $1::uuid)",
        new_in_batch[0].event_id,
    )
    assert appended_together == len(new_in_batch), "the batch was appended as one, the conflicts at their indexes"
    letters = await dead_letters(js, worker_config)
    conflicts = sorted(msg_id for _, msg_id in slots.values() if msg_id.startswith("conflict"))
    assert sorted(letter.headers["Audit-Original-Msg-Id"] for letter in letters) == conflicts
    assert {letter.headers["Audit-Dead-Reason"] for letter in letters} == {"conflicting_duplicate"}
    await assert_each_acknowledged_once(nc, acks, published)
    info = await consumer(js, worker_config)
    assert info.num_redelivered == 0, "nothing left unacknowledged until ack_wait"
    assert (stopped.stats.appended, stopped.stats.duplicates, stopped.stats.dead_lettered) == (
        4 + 1 + len(new_in_batch) + len(after),
        2,
        len(conflicts),
    )
    await assert_exactly_once(owner, [event.event_id for event in [*stored_before, plug, *new_in_batch, *after]])
    await assert_projections_are_what_a_rebuild_computes(owner)


# --- stopping while the acks are half sent --------------------------------------------------------------------


async def test_a_stop_while_a_batch_is_acked_slice_by_slice_acks_all_of_it_once(
    database, config, start_worker, publisher, nc, owner
):
    """The stop is set while the plug's append waits and a batch of several slices is buffered: that batch is
    appended and acked with the stop set, slice by slice, and the worker returns only when all of it is acked."""
    batch = 8 * _ACK_SLICE - 1
    worker_config, js = await provisioned(config, nc, batch)
    acks = await counting_acks(nc, worker_config)
    running = await start_worker(worker_config)
    async with holding_the_log_head(database) as head:
        plug = await publisher.publish(make_event())
        await eventually(lambda: _waiting(owner), what="the plug's append waiting on the head")
        buffered = await publisher.publish_many([make_event(tenant=f"tenant-{i % 3}") for i in range(batch)])
        await eventually(lambda: _in_hand(js, worker_config, 1 + batch), what="the batch buffered whole")
        running.stop.set()
        await head.release()
    stopped = await running.task

    assert await stored_count(owner) == 1 + batch, "what the worker held when stopped was committed"
    info = await consumer(js, worker_config)
    assert info.num_ack_pending == 0, "and all of it acknowledged before the worker returned"
    await assert_each_acknowledged_once(nc, acks, 1 + batch)
    assert (stopped.stats.appended, stopped.stats.duplicates, stopped.stats.dead_lettered) == (1 + batch, 0, 0)
    await assert_exactly_once(owner, [ack.event_id for ack in [plug, *buffered]])


async def test_sigterm_while_a_batch_is_acked_slice_by_slice_acks_all_of_it_once(
    database, config, spawn_worker, publisher, nc, owner
):
    """The same stop by SIGTERM, in an `audit-service ingest` process: the acks still buffered in its NATS client
    must reach the server before it exits."""
    batch = 8 * _ACK_SLICE - 1
    js = nc.jetstream()
    await provision(js, config.nats, config.ingest)
    acks = await counting_acks(nc, config)
    worker = spawn_worker(AUDIT_INGEST_BATCH_SIZE=str(batch))
    await worker.ready()
    async with holding_the_log_head(database) as head:
        plug = await publisher.publish(make_event())
        await eventually(lambda: _waiting(owner), what="the plug's append waiting on the head")
        buffered = await publisher.publish_many([make_event(tenant=f"tenant-{i % 3}") for i in range(batch)])
        await eventually(lambda: _in_hand(js, config, 1 + batch), what="the batch buffered whole")
        worker.process.send_signal(signal.SIGTERM)
        await head.release()
        assert await worker.terminate() == 0, worker.output()

    assert await stored_count(owner) == 1 + batch, "what the worker held when signalled was committed"
    assert (await consumer(js, config)).num_ack_pending == 0, "and all of it acknowledged before it exited"
    await assert_each_acknowledged_once(nc, acks, 1 + batch)
    assert f"ingest worker stopped: {1 + batch} appended, 0 duplicates, 0 dead-lettered" in worker.output()
    await assert_exactly_once(owner, [ack.event_id for ack in [plug, *buffered]])


# --- commit announcements in commit order ---------------------------------------------------------------------

LARGE = 2000
"""A batch whose acks take many slices: the small batch behind it is appended meanwhile."""
ROUNDS = 5
"""Large-then-small rounds (the first appends of a worker's connections are slower: its statements are prepared)."""


async def _large_then_small_rounds(database, worker_config, js, publisher, owner) -> list:
    """Rounds of a plug, a large batch and a small one, each appended in that order; their publish acks."""
    acks = []
    for _ in range(ROUNDS):
        async with holding_the_log_head(database) as head:
            acks.append(await publisher.publish(make_event()))
            await eventually(lambda: _waiting(owner), what="the plug's append waiting on the head")
            acks += await publisher.publish_many([make_event(tenant=f"tenant-{i % 3}") for i in range(LARGE)])
            await eventually(lambda: _in_hand(js, worker_config, 1 + LARGE), what="the large batch buffered")
            acks += await publisher.publish_many([make_event(tenant="acme") for _ in range(2)])
            await head.release()
        published = len(acks)
        await eventually(lambda: drained(js, worker_config, published), what="the round stored")  # noqa: B023
    return acks


async def test_one_workers_announcements_go_out_in_commit_order_when_a_small_batch_follows_a_large_one(
    database, config, start_worker, publisher, nc, owner
):
    """Announcements are hints the live feeds put back in order, but one worker's used to arrive in commit order
    (parts of the next append only came out of order between two workers): the small batch's append, started
    while the large batch's acks go out slice by slice, commits and is announced before the large batch is."""
    worker_config, js = await provisioned(config, nc, LARGE)
    heard = Announcements()
    await nc.subscribe(f"{worker_config.nats.committed_subject_prefix}.>", cb=heard.handle)
    await nc.flush()
    running = await start_worker(worker_config)
    acks = await _large_then_small_rounds(database, worker_config, js, publisher, owner)
    await running.shutdown()
    await nc.flush()
    await eventually(lambda: _heard(heard, len(acks)), what="the last announcement")

    appends = heard.appends()
    assert appends[0][0] == 0
    out_of_order = [(earlier, later) for earlier, later in itertools.pairwise(appends) if later[0] != earlier[1]]
    assert not out_of_order, f"announced out of commit order: {appends}"
    await assert_exactly_once(owner, [ack.event_id for ack in acks])


async def test_a_live_tail_gets_every_event_once_in_order_when_a_small_batch_follows_a_large_one(
    database, config, start_worker, publisher, nc, owner
):
    worker_config, js = await provisioned(config, nc, LARGE)
    running = await start_worker(worker_config)
    async with serving_api(worker_config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest())
        await tail.caught_up()
        acks = await _large_then_small_rounds(database, worker_config, js, publisher, owner)
        await tail.received(len(acks))
        assert tail.in_order_once()
        assert_same_sequence(tail.ids, [ack.event_id for ack in acks], "the tail, in commit (= publish) order")
        await tail.close()
    await running.shutdown()


# --- two workers ----------------------------------------------------------------------------------------------


async def test_two_workers_acking_in_slices_ack_each_message_once_and_dead_letter_only_the_conflicts(
    database, config, start_worker, publisher, nc, owner
):
    """Both workers' batches span several slices, with copies and conflicts of events the other worker may be
    appending at the same time; the backlog is published first, so both start on full batches. Between two
    workers the first of two events under one id to commit is the stored one (either can be), and the other is
    the conflict."""
    batch = 2 * _ACK_SLICE + 22
    worker_config, js = await provisioned(config, nc, batch)
    acks = await counting_acks(nc, worker_config)
    originals = [prepared(publisher, make_event(tenant=("acme", "globex", "initech")[i % 3])) for i in range(1200)]
    order: list[tuple[event_pb2.AuditEvent, str]] = []
    conflicts: dict[str, str] = {}  # the other event's msg id -> the original's
    for i, original in enumerate(originals):
        order.append((original, original.event_id))
        if i % 37 == 36:  # a copy of an event some batches earlier: a duplicate
            order.append((originals[i - 30], f"copy-{i}"))
        if i % 101 == 100:  # another event under the id of one a batch or so earlier: a conflict
            conflicts[f"conflict-{i}"] = originals[i - 50].event_id
            order.append((_other(originals[i - 50], "conflict"), f"conflict-{i}"))
    for event, msg_id in order:
        await publish_raw(js, worker_config, event, msg_id)

    workers = [await start_worker(worker_config), await start_worker(worker_config)]
    await eventually(lambda: drained(js, worker_config, len(order)), what="everything stored or dead-lettered")
    stats = [(await worker.shutdown()).stats for worker in workers]

    assert all(worker_stats.appended > 0 for worker_stats in stats), f"both workers appended: {stats}"
    assert sum(worker_stats.appended for worker_stats in stats) == len(originals)
    assert sum(worker_stats.duplicates for worker_stats in stats) == len(order) - len(originals) - len(conflicts)
    letters = {letter.headers["Audit-Original-Msg-Id"] for letter in await dead_letters(js, worker_config)}
    assert len(letters) == len(conflicts), "one of each conflicting pair dead-lettered, nothing else"
    stored_messages = dict(await owner.fetch("SELECT event_id::text, message FROM audit_events"))
    for other_msg_id, event_id in conflicts.items():
        assert (other_msg_id in letters) != (event_id in letters), f"one of {other_msg_id} and {event_id}"
        kept = "conflict" if event_id in letters else next(e.message for e in originals if e.event_id == event_id)
        assert stored_messages[event_id] == kept, "the event stored is the one not dead-lettered"
    await assert_each_acknowledged_once(nc, acks, len(order))
    assert (await consumer(js, worker_config)).num_redelivered == 0
    await assert_exactly_once(owner, [event.event_id for event in originals])
    await assert_projections_are_what_a_rebuild_computes(owner)
