"""The per-action projection (audit_action_counts_hourly) as the append now writes it, summed in SQL from the fine
counts' arrays (store/append.py, _MOVE_HEADS_AND_COUNT), attacked: batches spanning many hours and tenants, one
action in several resource types, outcomes and actor types (summed, never overwritten), ties ranked by action in
code-point order, events stored already (the recount), repeats and conflicts within a batch, an append inside a
caller's transaction, and actions at the contract's limit. After every append the rows must be what a Python model
of the log computes (independently of the SQL the append and the rebuild share) and what a rebuild computes."""

from __future__ import annotations

import collections
import datetime as dt
import random

import asyncpg
import pytest
from audit.v1 import event_pb2
from audit_client.errors import InvalidEventError
from audit_client.validation import ACTION_PATTERN
from audit_service.store.append import LogAppender
from audit_service.store.projections import rebuild_projections

from ..factories import content_of, make_event, stamp

HOUR = dt.timedelta(hours=1)
BASE = dt.datetime(2026, 3, 1, 0, 0, tzinfo=dt.UTC)
LONGEST_ACTION = "A" + "b" * 126 + "z"
"""128 characters: ACTION_PATTERN's limit (it is ASCII only, so 128 bytes too)."""
# Ties are ranked by action in code-point order (COLLATE "C"): upper case, then '_', then lower case here.
TIED = ("b.x", "B.x", "a.x", "A_x", "Aa", "a", LONGEST_ACTION)
RESOURCE_TYPES = ("api_key", "deployment", "secret")
OUTCOMES = (event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED)
ACTOR_TYPES = (event_pb2.SUBJECT_TYPE_USER, event_pb2.SUBJECT_TYPE_SERVICE_ACCOUNT, event_pb2.SUBJECT_TYPE_SYSTEM)
ROWS = "SELECT tenant, hour, events, actions, counts FROM audit_action_counts_hourly ORDER BY tenant, hour"


def event(tenant: str, action: str, at: dt.datetime, n: int = 0) -> event_pb2.AuditEvent:
    """A stamped event; `n` picks its resource type, outcome and actor type (so one action's events fall in
    several rows of the fine counts)."""
    made = make_event(tenant=tenant, action=action)
    made.resource.type = RESOURCE_TYPES[n % 3]
    made.outcome = OUTCOMES[(n // 3) % 3]
    made.actor.type = ACTOR_TYPES[(n // 9) % 3]
    made.occurred_at.FromDatetime(at)
    return stamp(made)


def other_content(stored: event_pb2.AuditEvent) -> tuple:
    """Another event under a stored event's id: a conflict."""
    changed = event_pb2.AuditEvent()
    changed.CopyFrom(stored)
    changed.message = "not the stored event"
    return content_of(changed)


class Model:
    """The log as the test appended it: what the projection must hold."""

    def __init__(self) -> None:
        self.stored: dict[str, event_pb2.AuditEvent] = {}

    def appended(self, events: list[event_pb2.AuditEvent]) -> int:
        new = 0
        for stored in events:
            if stored.event_id not in self.stored:
                self.stored[stored.event_id] = stored
                new += 1
        return new

    def rows(self) -> list[tuple]:
        counts: dict[tuple[str, dt.datetime], collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for stored in self.stored.values():
            at = stored.occurred_at.ToDatetime(tzinfo=dt.UTC)
            hour = at.replace(minute=0, second=0, microsecond=0)
            counts[(stored.tenant, hour)][stored.action] += 1
        rows = []
        for (tenant, hour), per_action in sorted(counts.items()):
            ranked = sorted(per_action.items(), key=lambda item: (-item[1], item[0].encode()))
            rows.append((tenant, hour, sum(per_action.values()), [a for a, _ in ranked], [c for _, c in ranked]))
        return rows


async def kept_rows(owner: asyncpg.Connection) -> list[tuple]:
    return [
        (row["tenant"], row["hour"], row["events"], list(row["actions"]), list(row["counts"]))
        for row in await owner.fetch(ROWS)
    ]


async def assert_projection(owner: asyncpg.Connection, model: Model) -> None:
    kept = await kept_rows(owner)
    assert kept == model.rows(), "the per-action counts kept by the appends differ from the log's"
    fine = await owner.fetch(
        "SELECT tenant, hour, sum(events)::bigint AS events FROM audit_counts_hourly GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [(row["tenant"], row["hour"], row["events"]) for row in fine] == [row[:3] for row in kept]
    await rebuild_projections(owner)
    assert await kept_rows(owner) == kept, "a rebuild computes other per-action counts"


def spread(tenant: str, action: str, hour: dt.datetime, events: int, offset: int = 0) -> list[event_pb2.AuditEvent]:
    """`events` events of one action in one hour, over every resource type, outcome and actor type, at the hour's
    first and last microsecond and between."""
    moments = (hour, hour + HOUR - dt.timedelta(microseconds=1), hour + dt.timedelta(minutes=30))
    return [event(tenant, action, moments[i % 3], offset + i) for i in range(events)]


async def test_action_counts_equal_the_log_through_hours_ties_recounts_repeats_conflicts_and_savepoints(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    appender = LogAppender()
    model = Model()
    hours = [BASE + k * HOUR for k in (0, 1, 5, 24 * 40)]  # neighbours, a gap, another month

    # 1. Many hours and two tenants in one batch; per (tenant, hour): one action spread over 27 fine rows, and
    # actions tied at 3 events each.
    first = []
    for tenant in ("acme", "globex"):
        for hour in hours:
            first += spread(tenant, "deployment.update", hour, 27)
            for action in TIED:
                first += spread(tenant, action, hour, 3, offset=7)
    random.Random(1).shuffle(first)
    result = await appender.append(app, [content_of(e) for e in first])
    assert result.appended == model.appended(first) == len(first)
    await assert_projection(owner, model)

    # 2. Events stored already among new ones (the counts are recomputed for the new ones only), and repeats
    # within the batch: a tie broken by one more event, another action catching up.
    again = first[::5]
    new = spread("acme", "a.x", hours[0], 1, offset=3) + spread("acme", "Aa", hours[1], 25)
    batch = [*again, *new, *new[:2], *again[:3]]
    result = await appender.append(app, [content_of(e) for e in batch])
    assert result.appended == model.appended(batch) == len(new)
    assert result.duplicates == len(batch) - len(new)
    await assert_projection(owner, model)

    # 3. Conflicts (stored ids with other content, and an id repeated within the batch with other content): not
    # counted.
    fresh = spread("globex", "b.x", hours[2], 4) + spread("globex", "zeta", hours[3], 2)
    contents = [other_content(first[0]), *(content_of(e) for e in fresh), other_content(fresh[1])]
    result = await appender.append(app, contents)
    assert result.appended == model.appended(fresh) == len(fresh)
    assert sorted(conflict.index for conflict in result.conflicts) == [0, len(contents) - 1]
    await assert_projection(owner, model)

    # 4. Inside the caller's transaction (a savepoint of it): committed with it, and rolled back with it.
    inside = spread("acme", "deployment.update", hours[1], 10) + spread("initech", LONGEST_ACTION, hours[2], 3)
    async with app.transaction():
        result = await appender.append(app, [content_of(e) for e in [*inside, first[1]]])
    assert result.appended == model.appended(inside)
    await assert_projection(owner, model)
    undone = spread("acme", "rolled.back", hours[0], 5)
    outer = app.transaction()
    await outer.start()
    assert (await appender.append(app, [content_of(e) for e in undone])).appended == len(undone)
    await outer.rollback()
    await assert_projection(owner, model)

    # 5. A batch of nothing new: nothing counted.
    result = await appender.append(app, [content_of(e) for e in [*inside[:4], *fresh]])
    assert result.appended == 0
    await assert_projection(owner, model)


async def test_many_small_random_batches_keep_the_action_counts_equal_to_the_log(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    """Few actions and hours, so that batch after batch adds to the same rows, moving ranks and ties; a third of
    each batch is copies of stored events."""
    rng = random.Random(19)
    appender = LogAppender()
    model = Model()
    actions = ("a", "B", "b", "a_", "Z", "a.b", "a:b", "a/b", "a-b", "aZ")
    for round_number in range(12):
        batch = [
            event(
                rng.choice(("acme", "globex")),
                rng.choice(actions),
                BASE + rng.randrange(4) * HOUR + dt.timedelta(seconds=rng.randrange(3600)),
                rng.randrange(27),
            )
            for _ in range(rng.randrange(1, 60))
        ]
        stored = list(model.stored.values())
        batch += [rng.choice(stored) for _ in range(len(batch) // 2)] if stored else []
        rng.shuffle(batch)
        result = await appender.append(app, [content_of(e) for e in batch])
        assert result.appended == model.appended(batch), f"round {round_number}"
        await assert_projection(owner, model)


@pytest.mark.parametrize(
    "action",
    [
        "A" + "b" * 128,  # 129 characters
        "a" + "😀" * 31,  # 4-byte UTF-8: 32 characters, 125 bytes
        "é",
    ],
)
def test_actions_beyond_the_contract_are_refused_before_any_count(action: str) -> None:
    assert not ACTION_PATTERN.fullmatch(action)
    with pytest.raises(InvalidEventError) as refused:
        content_of(stamp(make_event(action=action)))
    assert refused.value.field == "action"


def test_the_longest_action_the_contract_allows_is_the_one_counted_above() -> None:
    assert len(LONGEST_ACTION) == len(LONGEST_ACTION.encode()) == 128
    assert ACTION_PATTERN.fullmatch(LONGEST_ACTION)
    assert content_of(stamp(make_event(action=LONGEST_ACTION)))
