"""A time filter skips the log's old partitions and loses no event (migration 0015).

The log is partitioned by recorded_at; filters select on occurred_at. audit_log_head.max_occurred_after_recorded
(the most by which a stored event's occurred_at exceeds its recorded_at, kept by a statement trigger on the log)
lets a filter `occurred_at >= X` add `recorded_at >= X - bound`, on the partition key. These tests check both
halves: the partitions recorded before that bound are never read, and an event whose occurred_at is far ahead of
its recorded_at (an import with a recorded_at of the past) is still found.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.core.event_filter import UNRESTRICTED, compile_filter
from audit_service.core.records import GENESIS_HASH, STORED_COLUMNS, seal_canonical
from audit_service.store import queries
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate

from ..conftest import run_as_superuser
from ..factories import content_of, make_event, stamp

BOUND = "SELECT max_occurred_after_recorded FROM audit_log_head"


def _event(tenant: str, occurred_at: dt.datetime):
    event = make_event(tenant)
    event.occurred_at.FromDatetime(occurred_at)
    return stamp(event)


async def _append(conn: asyncpg.Connection, recorded_at: dt.datetime, occurred_at: dt.datetime, count: int = 3):
    events = [_event("acme", occurred_at) for _ in range(count)]
    await LogAppender().append(conn, [content_of(event) for event in events], recorded_at=recorded_at)
    return [event.event_id for event in events]


async def _store_as_before_the_bound(
    conn: asyncpg.Connection,
    recorded_at: dt.datetime,
    occurred: list[dt.datetime],
    after: tuple[int, bytes] = (0, GENESIS_HASH),
) -> bytes:
    """Events of tenant acme COPYed as the appender of migrations 6-14 stored them (no bound kept), one per
    occurred_at, after the log's (position, acme's last hash) `after`; returns acme's new last hash."""
    await conn.execute("SELECT audit_ensure_partition($1)", recorded_at)
    rows, ids = [], []
    first, prev_hash = after
    for position, occurred_at in enumerate(occurred, start=first + 1):
        event = _event("acme", occurred_at)
        canonical, prev_hash, row = seal_canonical(position, recorded_at, content_of(event), prev_hash)
        rows.append((*row, len(canonical)))
        ids.append((uuid.UUID(event.event_id), position, recorded_at))
    await conn.copy_records_to_table("audit_events", records=rows, columns=STORED_COLUMNS)
    await conn.copy_records_to_table("audit_event_ids", records=ids, columns=["event_id", "position", "recorded_at"])
    last = first + len(rows)
    await conn.execute("UPDATE audit_log_head SET last_position = $1, last_recorded_at = $2", last, recorded_at)
    await conn.execute(
        "INSERT INTO audit_chain_heads VALUES ('acme', $1, $2) "
        "ON CONFLICT (tenant) DO UPDATE SET last_position = excluded.last_position, last_hash = excluded.last_hash",
        last,
        prev_hash,
    )
    return prev_hash


def _page_sql(start: dt.datetime) -> tuple[str, list[object]]:
    event_filter = pb.EventFilter()
    event_filter.start_time.FromDatetime(start)
    query = queries.PageQuery(
        where=compile_filter(event_filter, UNRESTRICTED),
        newest_first=True,
        after_position=None,
        limit=50,
        max_bytes=4 * 1024 * 1024,
    )
    return queries.page_sql(query)


def _scans(plan: dict[str, Any]) -> dict[str, int]:
    """Partitions read by the plan: relation name -> loops actually executed (0: never executed)."""
    found: dict[str, int] = {}
    if "Relation Name" in plan:
        found[plan["Relation Name"]] = found.get(plan["Relation Name"], 0) + plan.get("Actual Loops", 0)
    for child in plan.get("Plans", ()):
        for name, loops in _scans(child).items():
            found[name] = found.get(name, 0) + loops
    return found


def _partition(moment: dt.datetime) -> str:
    return f"audit_events_{moment:%Y_%m}"


async def test_a_start_time_reads_only_the_partitions_that_can_hold_it_and_finds_every_event(database) -> None:
    now = dt.datetime.now(dt.UTC)
    months_ago = [now - dt.timedelta(days=days) for days in (95, 65, 35)]
    conn = await asyncpg.connect(database.app_url)
    try:
        for recorded_at in months_ago:  # history, each event recorded a minute after it occurred
            await _append(conn, recorded_at, recorded_at - dt.timedelta(minutes=1))
        recent = await _append(conn, now, now - dt.timedelta(minutes=1))
        assert await conn.fetchval(BOUND) == dt.timedelta(0)

        start = now - dt.timedelta(hours=1)
        sql, args = _page_sql(start)
        assert {str(row["event_id"]) for row in await conn.fetch(sql, *args)} == set(recent)
        (plan,) = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
        read = {name: loops for name, loops in _scans(plan["Plan"]).items() if name.startswith("audit_events_")}
        assert read.get(_partition(now), 0) >= 1
        for recorded_at in months_ago:
            assert read.get(_partition(recorded_at), 0) == 0, (recorded_at, read)
    finally:
        await conn.close()


async def test_an_event_that_occurred_long_after_it_was_recorded_is_still_found(database) -> None:
    """An import (recorded_at of the past, occurred_at of today) widens the bound: exact before fast."""
    now = dt.datetime.now(dt.UTC)
    recorded_long_ago = now - dt.timedelta(days=70)
    conn = await asyncpg.connect(database.app_url)
    try:
        imported = await _append(conn, recorded_long_ago, now - dt.timedelta(minutes=5), count=2)
        recent = await _append(conn, now, now - dt.timedelta(minutes=1))
        bound = await conn.fetchval(BOUND)
        assert bound >= now - dt.timedelta(minutes=5) - recorded_long_ago - dt.timedelta(seconds=1)

        sql, args = _page_sql(now - dt.timedelta(hours=1))
        found = {str(row["event_id"]) for row in await conn.fetch(sql, *args)}
        assert found == {*imported, *recent}
    finally:
        await conn.close()


async def test_the_migration_computes_the_bound_and_every_later_insert_keeps_it(postgres) -> None:
    name = f"m_{uuid.uuid4().hex[:12]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(postgres.url(name))
    try:
        await migrate(conn, up_to=14)
        recorded_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
        last_hash = await _store_as_before_the_bound(
            conn, recorded_at, [recorded_at + dt.timedelta(hours=2), recorded_at]
        )

        assert [migration.version for migration in await migrate(conn, up_to=15)] == [15]
        assert await conn.fetchval(BOUND) == dt.timedelta(hours=2)
        # Lowered, the bound would hide events from time filters: the head's guard refuses it.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="max_occurred_after_recorded"):
            await conn.execute("UPDATE audit_log_head SET max_occurred_after_recorded = '1 hour'")
        # Rows COPYed around the appender (a bulk load) raise it in the same statement, as the appender's do.
        later = recorded_at + dt.timedelta(days=1)
        await _store_as_before_the_bound(conn, later, [later + dt.timedelta(hours=3)], after=(2, last_hash))
        assert await conn.fetchval(BOUND) == dt.timedelta(hours=3)
    finally:
        await conn.close()
