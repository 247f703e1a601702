"""One active reactor at a time: a lease held as a PostgreSQL session advisory lock.

Two reactors evaluating and delivering at once would store nothing twice (alert ids are deterministic) but would
deliver twice and could commit alerts out of their seq order, which WatchAlerts and the deliveries rely on. So a
`react` process first takes the lease on a connection of its own; a second one stands by and takes over when the
first one's session ends (a crash, kill -9 or a lost connection ends it: PostgreSQL releases the lock). The holder
checks its lease connection every few seconds and stops its work when the lease is gone, before taking it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from ..waiting import pause
from .pool import DATABASE_FAILURES

log = logging.getLogger(__name__)

LEASE_KEY = 0x61_75_64_69_74_5F_72  # "audit_r" in ASCII: the advisory lock of the reactor's lease


class ReactorLease:
    """The lease of the active reactor, on a connection of its own."""

    def __init__(self, url: str, *, retry_seconds: float = 2.0, check_seconds: float = 2.0) -> None:
        self._url = url
        self._retry_seconds = retry_seconds
        self._check_seconds = check_seconds
        self._conn: asyncpg.Connection | None = None

    async def acquire(self, stop: asyncio.Event, *, on_standby: Callable[[], None] | None = None) -> bool:
        """Waits until this process holds the lease (True) or `stop` is set (False).

        Args:
            on_standby: called once another reactor is found holding it (a standby is ready: to take over).
        """
        standing_by = False
        while not stop.is_set():
            conn = None
            try:
                conn = await asyncpg.connect(self._url, timeout=10)
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEASE_KEY):
                    self._conn = conn
                    log.info("reactor: holding the lease%s", " (taking over)" if standing_by else "")
                    return True
                if not standing_by:
                    log.info("reactor: another reactor holds the lease; standing by")
                    standing_by = True
                    if on_standby is not None:
                        on_standby()
            except DATABASE_FAILURES as error:
                log.warning("reactor: cannot take the lease (%s); retrying", error)
            if conn is not None and self._conn is not conn:
                with contextlib.suppress(*DATABASE_FAILURES):
                    await conn.close(timeout=5)
            await pause(until=stop, seconds=self._retry_seconds)
        return False

    async def watch(self, halt: asyncio.Event) -> None:
        """Sets `halt` when the lease is lost (its connection fails a check); returns when `halt` is set."""
        while not halt.is_set():
            await pause(until=halt, seconds=self._check_seconds)
            if halt.is_set():
                return
            conn = self._conn
            try:
                if conn is None:
                    raise ConnectionError("released")
                await conn.fetchval("SELECT 1", timeout=self._check_seconds)
            except DATABASE_FAILURES as error:
                log.warning("reactor: lost the lease (%s); stopping, then taking it again", error)
                halt.set()

    async def release(self) -> None:
        """Gives the lease up (closing its session releases the lock, whatever state it is in)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*DATABASE_FAILURES):
                await conn.close(timeout=5)
