"""Connections to PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from ..errors import UnavailableError


async def create_pool(url: str, *, max_size: int = 10, command_timeout: float = 60.0) -> asyncpg.Pool:
    """A connection pool; jsonb columns come back as text (parsed where needed).

    Args:
        command_timeout: seconds a statement may run; then asyncpg cancels it in PostgreSQL and raises
            TimeoutError.
    """
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings={"application_name": "audit-service"},
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
