"""The free-text search index's pending list is merged beside the appends, by the service role, and searches
stay exact before and after (migration 0016, store/search_index.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_client import Publisher
from audit_service.core.event_filter import UNRESTRICTED, compile_filter
from audit_service.store import queries
from audit_service.store.append import LogAppender
from audit_service.store.search_index import MERGE_EVERY_EVENTS

from ..conftest import eventually
from ..factories import content_of, make_event, stamp

_MERGE = "SELECT audit_clean_search_pending()"
_MERGE_LOCK = 4707744067222980942


async def _pending_tuples(owner: asyncpg.Connection) -> int:
    """Entries waiting in the pending list of this month's partition's search index."""
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    partition = f"audit_events_{dt.datetime.now(dt.UTC):%Y_%m}"
    index = await owner.fetchval(
        """
        SELECT i.inhrelid::regclass::text FROM pg_inherits AS i JOIN pg_index AS x ON x.indexrelid = i.inhrelid
        WHERE i.inhparent = 'audit_events_search'::regclass AND x.indrelid = $1::regclass
        """,
        partition,
    )
    return await owner.fetchval("SELECT pending_tuples FROM pgstatginindex($1::regclass)", index)


async def _search(conn: asyncpg.Connection, words: str) -> list[str]:
    where = compile_filter(pb.EventFilter(search=words), UNRESTRICTED)
    statement, params = queries.page_sql(
        queries.PageQuery(where=where, newest_first=False, after_position=None, limit=1000, max_bytes=1 << 24)
    )
    return [str(row["event_id"]) for row in await conn.fetch(statement, *params)]


async def test_the_service_role_merges_the_pending_list_and_searches_find_the_same_events_before_and_after(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    marked = [stamp(make_event(message=f"rotated the zebrafish key {i}")) for i in range(40)]
    others = [stamp(make_event(message="rotated a key")) for _ in range(40)]
    await LogAppender().append(app, [content_of(event) for event in marked + others])
    expected = [event.event_id for event in marked]

    assert await _pending_tuples(owner) > 0
    assert await _search(app, "zebrafish") == expected  # read from the pending list

    merged = await app.fetchval(_MERGE)

    assert merged > 0
    assert await _pending_tuples(owner) == 0
    assert await _search(app, "zebrafish") == expected  # read from the index
    assert await app.fetchval(_MERGE) == 0


async def test_a_merge_returns_at_once_while_another_is_running(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    await LogAppender().append(app, [content_of(stamp(make_event())) for _ in range(10)])
    async with owner.transaction():
        await owner.execute("SELECT pg_advisory_xact_lock($1)", _MERGE_LOCK)  # a merge in progress elsewhere

        assert await asyncio.wait_for(app.fetchval(_MERGE), timeout=10) == 0

    assert await _pending_tuples(owner) > 0
    assert await app.fetchval(_MERGE) > 0


async def test_only_the_service_role_may_merge(owner: asyncpg.Connection) -> None:
    await owner.execute("CREATE ROLE merge_outsider")
    try:
        await owner.execute("SET ROLE merge_outsider")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await owner.fetchval(_MERGE)
    finally:
        await owner.execute("RESET ROLE")
        await owner.execute("DROP ROLE merge_outsider")


async def test_the_worker_merges_once_enough_events_wait_in_the_pending_list(
    start_worker, publisher: Publisher, owner: asyncpg.Connection, database
) -> None:
    # Appends never merge by themselves here (the list's own limit out of reach): only the worker's merge does.
    await owner.execute(f"ALTER DATABASE \"{database.name}\" SET gin_pending_list_limit = '1GB'")
    await start_worker()

    await _publish_and_store(publisher, owner, 100, stored_before=0)
    assert await _pending_tuples(owner) > 0  # fewer than MERGE_EVERY_EVENTS: left for a larger merge

    # The append that brings the count to MERGE_EVERY_EVENTS is the last one: nothing is added after its merge
    # (with more events, the ones appended while the merge ran would wait for the next one).
    await _publish_and_store(publisher, owner, MERGE_EVERY_EVENTS - 100, stored_before=100)
    await eventually(lambda: _pending_is_empty(owner), what="the pending list merged")


async def _publish_and_store(
    publisher: Publisher, owner: asyncpg.Connection, count: int, *, stored_before: int
) -> None:
    await publisher.publish_many([make_event(message=f"merge test event {i}") for i in range(count)])

    async def stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == stored_before + count

    await eventually(stored, what=f"{count} events stored")


async def _pending_is_empty(owner: asyncpg.Connection) -> bool:
    return await _pending_tuples(owner) == 0


async def test_partitions_created_ahead_do_not_take_the_merge_from_the_month_appends_go_to(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    await LogAppender().append(app, [content_of(stamp(make_event())) for _ in range(10)])
    now = dt.datetime.now(dt.UTC)
    for days_ahead in (70, 100):  # the service role may create partitions for any moment
        await app.execute("SELECT audit_ensure_partition($1)", now + dt.timedelta(days=days_ahead))
    assert await _pending_tuples(owner) > 0

    assert await app.fetchval(_MERGE) > 0

    assert await _pending_tuples(owner) == 0
