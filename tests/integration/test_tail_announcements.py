"""Commit announcements are hints: whoever can publish on <prefix>.committed.<tenant> cannot put events into live
tails, hide the real ones, or move a replica past the log's head. Only the log's own events are delivered."""

from __future__ import annotations

import datetime as dt

from audit.v1 import audit_service_pb2 as pb
from audit.v1 import committed_pb2
from audit_service.config import load_config
from audit_service.core.records import chain_hash, seal_canonical

from ..conftest import eventually, serving_api, store_events
from ..factories import content_of, make_event, stamp
from ..tail_helpers import Reader

NOW = dt.datetime.now(dt.UTC)


def forged_part(prev_position: int, last_position: int, **event_fields: object) -> committed_pb2.CommittedBatch:
    """An announcement of positions prev+1..last carrying made-up events whose hashes are self-consistent (anyone
    can compute SHA-256): only the log can tell them from real ones."""
    part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=last_position)
    prev_hash = bytes(32)
    for position in range(prev_position + 1, last_position + 1):
        content = content_of(stamp(make_event(message="forged", **event_fields)))
        canonical, digest, _ = seal_canonical(position, NOW, content, prev_hash)
        part.events.add(canonical=canonical, prev_hash=prev_hash, hash=digest)
        prev_hash = digest
    return part


async def log_ids(owner) -> list[str]:
    return [row[0] for row in await owner.fetch("SELECT event_id::text FROM audit_events ORDER BY position")]


async def test_a_forged_announcement_of_the_next_position_neither_reaches_tails_nor_hides_the_real_event(
    service_env, start_worker, publisher, owner, nc, config
):
    """The report: prev_position = the head, last_position = head + 1, sent before the real append commits."""
    await start_worker()
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme")))
        await tail.caught_up()
        for _ in range(5):
            await publisher.publish(make_event())
        await tail.received(5)
        subject = f"{config.nats.committed_subject_prefix}.acme"
        await nc.publish(subject, forged_part(5, 6).SerializeToString())
        await nc.flush()
        real = [(await publisher.publish(make_event())).event_id for _ in range(3)]
        await tail.received(8)
        assert tail.ids == await log_ids(owner)
        assert tail.ids[5:] == real
        assert "forged" not in {event.message for event in tail.events}
        assert tail.in_order_once()
        await tail.close()


def garbage_part(prev_position: int) -> committed_pb2.CommittedBatch:
    """Bytes that are no canonical encoding, with a matching hash."""
    garbage = b"not a canonical encoding"
    part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=prev_position + 1)
    part.events.add(canonical=garbage, prev_hash=bytes(32), hash=chain_hash(bytes(32), garbage))
    return part


async def test_forged_ranges_and_garbage_are_ignored_and_every_real_event_arrives(
    service_env, start_worker, publisher, owner, nc, config
):
    await start_worker()
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest())
        await tail.caught_up()
        subject = f"{config.nats.committed_subject_prefix}.acme"
        forgeries = [
            lambda head: forged_part(head, head + 2, tenant="globex"),
            lambda head: committed_pb2.CommittedBatch(
                prev_position=head, last_position=head + 10**9, omitted_events=10**9
            ),
            garbage_part,
            lambda head: forged_part(head - 1, head + 1) if head else forged_part(head, head + 1),
        ]
        for head, forge in enumerate(forgeries):
            await nc.publish(f"{subject}", forge(head).SerializeToString())
            await nc.flush()
            await publisher.publish(make_event())
            await tail.received(head + 1)
        assert tail.ids == await log_ids(owner)
        assert "forged" not in {event.message for event in tail.events}
        await tail.close()


async def test_a_forged_copy_of_an_unannounced_append_delivers_the_logs_events(service_env, database, nc):
    """An append whose real announcement is lost, and a forged one for exactly its positions, arriving first."""
    config = load_config(env={**service_env, "AUDIT_TAIL_POLL_SECONDS": "3600"})  # only announcements move the feed
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest())
        await tail.caught_up()
        stored = await store_events(database, [make_event() for _ in range(4)])  # appended, never announced
        subject = f"{config.nats.committed_subject_prefix}.acme"
        await nc.publish(subject, forged_part(0, 4).SerializeToString())
        await tail.received(4)
        assert tail.ids == stored
        assert "forged" not in {event.message for event in tail.events}
        await tail.close()


async def test_a_forged_announcement_while_nobody_tails_does_not_move_the_replica_past_the_log(
    service_env, start_worker, publisher, owner, nc, config
):
    """With no subscriber the feed only moves its head; a forged head + 1 must not let a tail started later skip
    the real event committed at that position."""
    await start_worker()
    async with serving_api(config) as server:
        first = (await publisher.publish(make_event())).event_id
        await eventually(lambda: _has_events(owner, 1), what="the first event stored")
        subject = f"{config.nats.committed_subject_prefix}.acme"
        await nc.publish(subject, forged_part(1, 2).SerializeToString())
        await nc.flush()
        # A tail from position 1: its history ends where the replica's feed is, then it goes live.
        tail = Reader.on_port(server.port, pb.TailEventsRequest(after_position=1))
        await tail.caught_up()
        second = (await publisher.publish(make_event())).event_id
        await tail.received(1)
        assert tail.ids == [second]
        assert await log_ids(owner) == [first, second]
        await tail.close()


async def _has_events(owner, count: int) -> bool:
    return await owner.fetchval("SELECT count(*) FROM audit_events") >= count


FLOOD_PARTS = 200_000
"""Forged announcements sent at most while waiting for the real events: on this suite's machines the flood lasts
several seconds, many times the feed's hole grace period and its head poll."""


async def test_a_flood_of_forged_announcements_does_not_hold_back_an_unannounced_append(service_env, database, nc):
    """Each forged part names positions nearer the head than the one before, so the hole in front of the feed ends
    somewhere new on every pass. The feed waited for a hole to stay the same for its grace period before reading it
    from the log: committed events whose announcement was lost reached no tail while the flood went on."""
    config = load_config(env={**service_env, "AUDIT_TAIL_POLL_SECONDS": "0.2"})
    async with serving_api(config) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest())
        await tail.caught_up()
        stored = await store_events(database, [make_event() for _ in range(3)])  # appended, never announced
        subject = f"{config.nats.committed_subject_prefix}.acme"
        forged = 0
        while len(tail.ids) < len(stored) and forged < FLOOD_PARTS:
            end = 10**12 - forged
            part = committed_pb2.CommittedBatch(prev_position=end - 1, last_position=end, omitted_events=1)
            await nc.publish(subject, part.SerializeToString())
            forged += 1
            if forged % 100 == 0:
                await nc.flush()
        assert tail.ids == stored, f"not delivered during a flood of {forged} forged announcements"
        await tail.close()
