"""How a pooled connection fails when its session ends under it: every failure is one the service retries.

asyncpg does not always say "connection is closed": when the server's FATAL message has been read and the closed
socket not yet, the next statement raises InternalClientError ("cannot switch to state 12; another operation (2)
is in progress"). A reactor process died of it once in CI when a database outage ended its sessions; every loop
that retries the database catches store.pool.DATABASE_FAILURES, and the API maps CONNECTION_FAILURES to
UNAVAILABLE."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest
from audit_service.api.errors import status_for
from audit_service.store.pool import DATABASE_FAILURES, create_pool

from ..conftest import run_cli, store_events
from ..factories import make_event


async def test_statements_on_sessions_that_end_under_them_fail_only_as_failures_the_service_retries(
    database, sessions_ending
):
    pool = await create_pool(database.app_url, max_size=4)
    failures: collections.Counter[str] = collections.Counter()
    answered = 0
    unexpected: list[BaseException] = []

    async def query_until(done: asyncio.Event) -> None:
        nonlocal answered
        while not done.is_set():
            try:
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                answered += 1
            except DATABASE_FAILURES as error:
                failures[type(error).__name__] += 1
                assert status_for(error)[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            except Exception as error:
                unexpected.append(error)
            await asyncio.sleep(0.001)

    try:
        async with sessions_ending() as ending:
            done = asyncio.Event()
            users = [asyncio.create_task(query_until(done)) for _ in range(3)]
            await asyncio.sleep(3)
            done.set()
            await asyncio.gather(*users)
        assert not unexpected, unexpected[:3]
        assert ending.ended > 20 and sum(failures.values()) > 20, (ending.ended, failures)  # it did end sessions
        assert answered > 0
        async with pool.acquire() as conn:  # the pool replaced every ended connection
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


@pytest.mark.slow
async def test_a_one_shot_command_whose_session_ends_under_it_is_one_line_not_a_traceback(
    database, service_env, sessions_ending
):
    """`audit-service verify` runs on the service's role: its session ended under it (an operator's session
    killer, a failover) was a traceback of AdminShutdownError or ConnectionDoesNotExistError."""
    await store_events(database, [make_event(("acme", "globex")[i % 2]) for i in range(3000)])
    async with sessions_ending() as ending:
        result = await asyncio.to_thread(run_cli, service_env, "verify")
    assert ending.ended > 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1, (result.stdout, result.stderr)  # 3,000 events take longer than 20 ms
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audit-service: PostgreSQL at "), lines
