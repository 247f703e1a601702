"""Connections to PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from ..errors import UnavailableError

CONNECTION_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)
"""How a connection to PostgreSQL fails when it cannot be made or its session ends (a restart, a network cut,
`pg_terminate_backend`): an OSError (TimeoutError among them), an InterfaceError ("connection is closed") or,
when the session ends between two statements, asyncpg's InternalClientError ("cannot switch to state 12;
another operation (2) is in progress", MagicStack/asyncpg#1069): the server's FATAL message was read, the closed
socket not yet. Terminating the sessions of a busy pool again and again gives that error on about one
failed statement in three (a scratch measurement); the pool replaces such a connection like any closed one.

The server says so too, with errors of its own: asyncpg's ConnectionDoesNotExistError ("connection was closed in
the middle of operation", SQLSTATE class 08: a PostgresConnectionError, not an InterfaceError), 57P01 (the session
terminated, AdminShutdownError), 57P03 (starting up, shutting down: CannotConnectNowError) and 53300 (too many
connections)."""

DATABASE_FAILURES: tuple[type[Exception], ...] = (*CONNECTION_FAILURES, asyncpg.PostgresError, UnavailableError)
"""A connection's failures, the server's errors and UnavailableError (no connection to be had from the pool,
`acquire` below): what a loop that retries the database catches."""


class _StatelessConnection(asyncpg.Connection):
    """A connection whose users keep no session state (no SET, LISTEN, cursors held across transactions or
    session-level advisory locks): released to its pool, it is only rolled back when a transaction is open, without
    the reset statement (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`), a round trip that
    cost a busy ingest worker ~6 ms per batch."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    url: str, *, max_size: int = 10, command_timeout: float = 60.0, stateless: bool = False
) -> asyncpg.Pool:
    """A connection pool; jsonb columns come back as text (parsed where needed).

    Args:
        command_timeout: seconds a statement may run; then asyncpg cancels it in PostgreSQL and raises
            TimeoutError.
        stateless: no user of the pool keeps session state (_StatelessConnection).
    """
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings={"application_name": "audit-service"},
        connection_class=_StatelessConnection if stateless else asyncpg.Connection,
    )


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; failing to get one (server down, database closed to connections) is Unavailable."""
    try:
        conn = await pool.acquire()
    except Exception as error:
        raise UnavailableError(f"cannot connect to PostgreSQL: {error}") from error
    try:
        yield conn
    finally:
        await pool.release(conn)
