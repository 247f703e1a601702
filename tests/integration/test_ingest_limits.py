"""Events at every documented limit, in ASCII and in multi-byte UTF-8, through the real client and worker: each
one is stored; one byte over a limit is refused by the client and dead-lettered by the worker, naming the
field; and whatever PostgreSQL itself refuses is dead-lettered alone, never wedging the log."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import audit_client
import pytest
from audit.v1 import event_pb2
from audit_client import InvalidEventError, Limits
from audit_service.ingest.streams import provision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import eventually
from ..factories import make_event

LIMITS = Limits()
TEXT_FIELDS = (
    "actor.id",
    "actor.slug",
    "actor.display_name",
    "actor.email",
    "actor.pat_name",
    "actor.controller_name",
    "actor.external_identity_slug",
    "resource.type",
    "resource.id",
    "resource.name",
    "resource.fqn",
    "parent_resource.type",
    "parent_resource.id",
    "parent_resource.name",
    "parent_resource.fqn",
    "request.route",
    "request.method",
    "request.user_agent",
    "cluster_id",
    "workspace_id",
)
"""Every short text field but request.ip_address (which must be an IP address)."""
CODE_POINTS = {1: [(0x21, 0x7E)], 2: [(0x80, 0x7FF)], 3: [(0x800, 0xD7FF), (0xE000, 0xFFFF)], 4: [(0x10000, 0x10FFFF)]}
"""Code points by the bytes they take in UTF-8 (no surrogates)."""


def fill(size_bytes: int, width: int, seed: int = 0) -> str:
    """Exactly `size_bytes` of UTF-8: random characters of `width` bytes, as many as fit, then ASCII. Random, so
    that PostgreSQL cannot compress them into a small index entry: the worst case of the byte limit."""
    rng = random.Random(seed)
    wide, rest = divmod(size_bytes, width)

    def character(width: int) -> str:
        low, high = rng.choice(CODE_POINTS[width])
        return chr(rng.randint(low, high))

    return "".join(character(width) for _ in range(wide)) + "".join(character(1) for _ in range(rest))


def set_field(event: event_pb2.AuditEvent, path: str, value: str) -> None:
    *parents, name = path.split(".")
    target = event
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)


widths = st.sampled_from(sorted(CODE_POINTS))
seeds = st.integers(0, 2**32)


@st.composite
def events_at_the_limits(draw) -> event_pb2.AuditEvent:
    """An event whose chosen text fields are at their byte limit (every one of them, or a few), its message at
    its character limit, its metadata at the nesting limit, in characters of the drawn widths."""
    event = make_event(tenant="t" + "0123456789" * 6 + "ab", action="A" + "b" * 127)  # 63 and 128 characters
    chosen = draw(st.one_of(st.just(TEXT_FIELDS), st.lists(st.sampled_from(TEXT_FIELDS), min_size=1, unique=True)))
    for path in chosen:
        set_field(event, path, fill(LIMITS.max_text_bytes, draw(widths), draw(seeds)))
    if draw(st.booleans()):
        width = draw(widths)
        event.message = fill(LIMITS.max_message_chars * width, width, draw(seeds))  # the limit is in characters
    if draw(st.booleans()):
        nested: dict = {"leaf": fill(64, draw(widths), draw(seeds))}
        for _ in range(LIMITS.max_struct_depth - 1):
            nested = {"n": nested}
        event.metadata.Clear()
        event.metadata.update(nested)
    return event


async def _stored(owner, event_ids: list[str]) -> bool:
    return await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_id = ANY($1::uuid[])", event_ids) == len(
        event_ids
    )


async def _dead_letters(js, stream: str) -> list:
    info = await js.stream_info(stream)
    return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


@pytest.fixture
async def worker(start_worker):
    return await start_worker()


@settings(
    max_examples=25, suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(events_at_the_limits(), min_size=1, max_size=4), over=st.sampled_from(TEXT_FIELDS), width=widths)
async def test_events_at_every_limit_are_stored_and_one_byte_over_is_refused_naming_the_field(
    worker, publisher, owner, nc, config, events, over, width
):
    acks = await asyncio.gather(*(publisher.publish(event) for event in events))
    ids = [ack.event_id for ack in acks]

    too_long = make_event()
    set_field(too_long, over, fill(LIMITS.max_text_bytes + 1, width, seed=len(ids)))
    with pytest.raises(InvalidEventError) as refused:
        publisher.prepare(too_long)
    assert (refused.value.field, refused.value.reason) == (over, "invalid_field")
    # A producer that does not use the client: the worker refuses it the same way.
    too_long.event_id = audit_client.new_event_id()
    too_long.occurred_at.GetCurrentTime()
    js = nc.jetstream()
    subject = f"{config.nats.events_subject_prefix}.{too_long.tenant}"
    await js.publish(subject, too_long.SerializeToString(), headers={"Nats-Msg-Id": too_long.event_id})
    sentinel = await publisher.publish(make_event())

    await eventually(lambda: _stored(owner, [*ids, sentinel.event_id]), what="the events at the limits stored")
    rows = await owner.fetch(
        "SELECT event_id::text AS id, actor_id, resource_type, resource_id, message FROM audit_events "
        "WHERE event_id = ANY($1::uuid[])",
        ids,
    )
    by_id = {row["id"]: row for row in rows}
    for ack, event in zip(acks, events, strict=True):
        row = by_id[ack.event_id]
        assert (row["actor_id"], row["resource_type"], row["resource_id"]) == (
            event.actor.id,
            event.resource.type,
            event.resource.id,
        ), "stored exactly as published"
        assert row["message"] == (event.message or None)

    async def dead_lettered() -> list:
        return [
            (letter.headers["Audit-Dead-Reason"], letter.headers["Audit-Dead-Field"])
            for letter in await _dead_letters(js, config.nats.dead_stream)
            if letter.headers.get("Audit-Original-Msg-Id") == too_long.event_id
        ]

    await eventually(lambda: _truthy(dead_lettered()), what="the event one byte over dead-lettered")
    assert await dead_lettered() == [("invalid_field", over)]
    assert not await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_id = $1::uuid", too_long.event_id)


# The three events of the report: each was accepted by the client and the worker, then refused by PostgreSQL
# ("index row size ... exceeds btree version 4 maximum 2704"), and the worker retried its batch forever.
REPORTED = [
    pytest.param({"resource.id": fill(4096, 4)}, "resource.id", id="resource.id of 1,024 4-byte characters"),
    pytest.param({"actor.id": fill(3000, 3)}, "actor.id", id="actor.id of 1,000 CJK characters"),
    pytest.param(
        {"resource.type": fill(1400, 2, seed=1), "resource.id": fill(1400, 2, seed=2)},
        "resource.type",
        id="resource.type and resource.id of 700 Cyrillic characters",
    ),
]


@pytest.mark.parametrize(("values", "field"), REPORTED)
async def test_an_event_too_large_for_an_index_is_dead_lettered_and_ingest_carries_on(
    worker, publisher, owner, nc, config, values, field
):
    js = nc.jetstream()
    poison = make_event()
    for path, value in values.items():
        set_field(poison, path, value)
    poison.event_id = audit_client.new_event_id()
    poison.occurred_at.GetCurrentTime()
    subject = f"{config.nats.events_subject_prefix}.acme"
    await js.publish(subject, poison.SerializeToString(), headers={"Nats-Msg-Id": poison.event_id})
    after = [await publisher.publish(make_event()) for _ in range(3)]

    await eventually(lambda: _stored(owner, [ack.event_id for ack in after]), what="the events published after it")
    await eventually(lambda: _has_messages(js, config.nats.dead_stream), what="the event dead-lettered")
    (dead,) = await _dead_letters(js, config.nats.dead_stream)
    assert (dead.headers["Audit-Dead-Reason"], dead.headers["Audit-Dead-Field"]) == ("invalid_field", field)
    assert "bytes" in dead.headers["Audit-Dead-Detail"]


async def test_whatever_the_database_refuses_is_dead_lettered_alone_with_its_message(
    start_worker, publisher, owner, nc, config
):
    """The rule that covers what validation does not foresee: a worker whose limits are wider than the indexes
    allow (as a misconfiguration or a future column would be) gets PostgreSQL's refusal, finds the event by
    splitting the batch, dead-letters it with the database's message, and stores the rest of the batch."""
    wide = dataclasses.replace(config.ingest, limits=dataclasses.replace(LIMITS, max_text_bytes=8192))
    js = nc.jetstream()
    batch = [make_event() for _ in range(30)]
    batch[11].resource.id = fill(4096, 4)  # 1,024 random 4-byte characters: over the btree entry limit of 2,704 bytes
    await provision(js, config.nats, wide)  # the streams, before the worker starts on the whole batch
    wide_client = audit_client.Publisher(
        nc, owns_connection=False, subject_prefix=config.nats.events_subject_prefix, limits=wide.limits
    )
    acks = await asyncio.gather(*(wide_client.publish(event) for event in batch))
    await start_worker(dataclasses.replace(config, ingest=wide))

    good = [ack.event_id for i, ack in enumerate(acks) if i != 11]
    await eventually(lambda: _stored(owner, good), what="the 29 other events of the batch")
    await eventually(
        lambda: _has_messages(js, config.nats.dead_stream), what="the event the database refused dead-lettered"
    )
    (dead,) = await _dead_letters(js, config.nats.dead_stream)
    assert dead.headers["Audit-Dead-Reason"] == "rejected_by_storage"
    assert dead.headers["Audit-Original-Msg-Id"] == acks[11].event_id
    assert "index row size" in dead.headers["Audit-Dead-Detail"]
    assert dead.headers["Audit-Dead-Detail"].endswith("SQLSTATE 54000")
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 29
    sentinel = await publisher.publish(make_event())
    await eventually(lambda: _stored(owner, [sentinel.event_id]), what="an event published afterwards")


async def _has_messages(js, stream: str) -> bool:
    return (await js.stream_info(stream)).state.messages > 0


async def _truthy(awaitable) -> bool:
    return bool(await awaitable)
