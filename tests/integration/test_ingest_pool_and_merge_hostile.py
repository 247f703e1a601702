"""The ingest pool's lean reset (store/pool.py: no reset statement on release) and the search index merge
function (migration 0016), attacked directly with the service role.

A connection handed back to the pool inside a transaction (failed, cut by a timeout, or cancelled while it waited
for the log head) must be rolled back before its next user, or that user's append runs inside the old transaction
(or finds it aborted), and a lock it held would stop every other worker. The merge runs as its owner: whatever the
service role sets in its session, it merges the log's search index and does nothing else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from audit_service.store.append import LogAppender
from audit_service.store.pool import acquire, create_pool
from audit_service.store.verify import verify_log

from ..conftest import APP_ROLE, eventually
from ..factories import content_of, make_event, stamp

_MERGE = "SELECT audit_clean_search_pending()"


@contextlib.asynccontextmanager
async def lean_pool(database, **options) -> AsyncIterator[asyncpg.Pool]:
    """The ingest worker's kind of pool, with one connection: whatever one user leaves, the next one gets."""
    pool = await create_pool(database.app_url, max_size=1, stateless=True, **options)
    try:
        async with acquire(pool) as conn:
            assert conn.get_reset_query() == "", "the pool under test skips the reset statement"
        yield pool
    finally:
        await pool.close()


def contents(n: int) -> list:
    return [content_of(stamp(make_event())) for _ in range(n)]


async def backend_pid(pool: asyncpg.Pool) -> int:
    async with acquire(pool) as conn:
        return await conn.fetchval("SELECT pg_backend_pid()")


async def head_is_free(owner: asyncpg.Connection) -> bool:
    """True when no transaction holds the log head (taken and given back at once)."""
    async with owner.transaction():
        try:
            await owner.execute("SELECT 1 FROM audit_log_head FOR UPDATE NOWAIT")
        except asyncpg.LockNotAvailableError:
            return False
    return True


async def app_backends(owner: asyncpg.Connection) -> list[tuple[str, str | None]]:
    rows = await owner.fetch(
        "SELECT state, wait_event_type FROM pg_stat_activity WHERE datname = current_database() AND usename = $1",
        APP_ROLE,
    )
    return [(row["state"], row["wait_event_type"]) for row in rows]


async def append_then_check(pool: asyncpg.Pool, owner: asyncpg.Connection, *, already: int = 0) -> None:
    """The next user of the pool appends, commits and leaves nothing open; the log verifies."""
    async with acquire(pool) as conn:
        assert not conn.is_in_transaction(), "handed out inside a transaction"
        result = await LogAppender().append(conn, contents(3))
    assert (result.prev_position, result.last_position) == (already, already + 3)
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == already + 3, "committed"
    assert await head_is_free(owner)
    assert [state for state, _ in await app_backends(owner)] == ["idle"]
    report = await verify_log(owner)
    assert report.ok, report.first_break


@contextlib.asynccontextmanager
async def head_held(database) -> AsyncIterator[asyncpg.Connection]:
    holder = await asyncpg.connect(database.owner_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM audit_log_head FOR UPDATE")
            yield holder
    finally:
        await holder.close()


# --- the lean reset -------------------------------------------------------------------------------------------


async def test_a_connection_given_back_inside_a_failed_transaction_is_rolled_back_before_its_next_use(database, owner):
    async with lean_pool(database) as pool:
        pid = await backend_pid(pool)
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with acquire(pool) as conn:
                await conn.execute("BEGIN")  # not asyncpg's transaction(): nothing rolls it back on the way out
                await conn.execute("SELECT 1 FROM audit_log_head FOR UPDATE")
                await conn.execute("SELECT 1 / 0")

        assert await backend_pid(pool) == pid, "the same connection, reused"
        await append_then_check(pool, owner)


async def test_a_connection_given_back_holding_the_log_head_in_an_open_transaction_frees_it(database, owner):
    """Not failed, only open: without a rollback the pooled connection would keep the head's lock while idle, and
    every append of every other worker would wait for it."""
    async with lean_pool(database) as pool:
        pid = await backend_pid(pool)
        async with acquire(pool) as conn:
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1 FROM audit_log_head FOR UPDATE")

        assert await head_is_free(owner), "the transaction was rolled back on release"
        assert await backend_pid(pool) == pid
        await append_then_check(pool, owner)


async def test_an_append_cut_by_the_client_side_command_timeout_leaves_a_clean_connection(database, owner):
    async with lean_pool(database, command_timeout=1.0) as pool:
        await append_then_check(pool, owner)
        async with head_held(database):
            with pytest.raises(TimeoutError):
                async with acquire(pool) as conn:
                    await LogAppender().append(conn, contents(5))
        await append_then_check(pool, owner, already=3)


async def test_an_append_cut_by_the_server_statement_timeout_leaves_a_clean_connection(database, owner):
    async with lean_pool(database) as pool:
        async with acquire(pool) as conn:
            await conn.execute("SET statement_timeout = '300ms'")  # the session's: the lean reset keeps it
        async with head_held(database):
            with pytest.raises(asyncpg.QueryCanceledError):
                async with acquire(pool) as conn:
                    await LogAppender().append(conn, contents(5))
        async with acquire(pool) as conn:
            assert not conn.is_in_transaction()
            await conn.execute("RESET statement_timeout")
        await append_then_check(pool, owner)


async def test_an_append_cancelled_while_it_waits_for_the_log_head_leaves_a_clean_connection(database, owner):
    async with lean_pool(database) as pool:
        pid = await backend_pid(pool)

        async def append() -> None:
            async with acquire(pool) as conn:
                await LogAppender().append(conn, contents(5))

        async with head_held(database):
            appending = asyncio.create_task(append())
            await eventually(lambda: _waiting_on_a_lock(owner), what="the append waiting for the head")
            appending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await appending
        assert await backend_pid(pool) == pid, "the same connection, reused"
        await append_then_check(pool, owner)


async def _waiting_on_a_lock(owner: asyncpg.Connection) -> bool:
    return ("active", "Lock") in await app_backends(owner)


# --- the merge function ---------------------------------------------------------------------------------------


async def _pending_tuples(owner: asyncpg.Connection) -> int:
    """Entries waiting in the pending lists of the log's search index (every partition)."""
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    return await owner.fetchval(
        "SELECT coalesce(sum((pgstatginindex(inhrelid)).pending_tuples), 0) FROM pg_inherits "
        "WHERE inhparent = 'audit_events_search'::regclass"
    )


async def test_a_session_search_path_and_a_temporary_decoy_index_do_not_redirect_the_merge(app, owner):
    """The function runs as its owner with its own search_path: a service-role session that puts pg_temp first and
    creates an index under the log index's name merges the log's pending list all the same."""
    await LogAppender().append(app, contents(40))
    assert await _pending_tuples(owner) > 0
    await app.execute("CREATE TEMPORARY TABLE decoy (tags int[])")
    await app.execute("CREATE INDEX audit_events_search ON decoy USING gin (tags)")
    await app.execute("SET search_path = pg_temp, public")
    decoy = await app.fetchval("SELECT 'audit_events_search'::regclass::oid")
    assert decoy != await owner.fetchval("SELECT 'audit_events_search'::regclass::oid"), "the session sees the decoy"

    assert await app.fetchval(_MERGE) > 0

    assert await _pending_tuples(owner) == 0, "the log's index merged, not the decoy"


async def test_the_merge_takes_nothing_from_its_caller_and_only_the_service_role_may_run_it(app, owner):
    definition = await owner.fetchrow(
        "SELECT p.prosecdef, p.proconfig, p.pronargs, pg_get_userbyid(p.proowner) AS owner_name, "
        "array(SELECT coalesce(nullif(pg_get_userbyid(a.grantee), '-'), 'PUBLIC') FROM aclexplode(p.proacl) AS a "
        "WHERE a.privilege_type = 'EXECUTE' ORDER BY 1) AS executors "
        "FROM pg_proc AS p WHERE p.oid = 'audit_clean_search_pending()'::regprocedure"
    )
    assert definition["prosecdef"] and definition["pronargs"] == 0
    schema = await owner.fetchval("SELECT current_schema()")
    assert definition["proconfig"] == [f"search_path={schema}, pg_temp"], "its own search_path, pg_temp last"
    assert sorted(definition["executors"]) == sorted({definition["owner_name"], "audit_service"}), "not PUBLIC"
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await app.fetchval("SELECT audit_clean_search_pending('audit_events_pkey'::regclass)")
    # The owner's privilege it uses is not lent to the caller beyond the function.
    await LogAppender().append(app, contents(3))
    partition_index = await owner.fetchval(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit_events_search'::regclass LIMIT 1"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app.fetchval("SELECT gin_clean_pending_list($1::regclass)", partition_index)
    assert await app.fetchval(_MERGE) > 0
