"""Merging the free-text search index's pending list beside the appends rather than inside one (migration 0016).

Each append adds its events' trigram entries to the index's pending list; PostgreSQL merges that list into the
index when it outgrows gin_pending_list_limit, and it did so inside an append, under the log head's lock. The
ingest worker tells a SearchIndexMerger what each append stored; every MERGE_EVERY_EVENTS events it merges on a
connection of its own, while the next batches are being stored (another PostgreSQL backend, so another core).
Searches read the pending list too, so they are exact whether or not a merge has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from .pool import DATABASE_FAILURES, acquire

log = logging.getLogger(__name__)

_MERGE = "SELECT audit_clean_search_pending()"

MERGE_EVERY_EVENTS = 1500
"""Events appended between two merges: a larger merge costs less per entry (entries of one trigram are merged
together), and ~2 KB of pending entries per event keep 1,500 events' under gin_pending_list_limit's 4 MB, past
which the append that overflows the list merges it itself."""


class SearchIndexMerger:
    """One merge at a time; a kick while one runs asks for one more after it."""

    def __init__(self, pool: asyncpg.Pool, *, every_events: int = MERGE_EVERY_EVENTS) -> None:
        self._pool = pool
        self._every_events = every_events
        self._unmerged_events = 0
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._failing = False

    def appended(self, events: int) -> None:
        """Counts appended events; merges once enough of them wait in the pending list."""
        self._unmerged_events += events
        if self._unmerged_events >= self._every_events:
            self._unmerged_events = 0
            self.kick()

    def kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._merge(), name="search index merge")
        else:
            self._again = True

    async def _merge(self) -> None:
        while True:
            self._again = False
            try:
                async with acquire(self._pool) as conn:
                    await conn.execute(_MERGE)
            except DATABASE_FAILURES as error:
                # Not the appends' concern: they merge by themselves when the list outgrows its limit.
                if not self._failing:
                    log.warning("merging the search index's pending list failed (%s: %s)", type(error).__name__, error)
                self._failing = True
                return
            if self._failing:
                log.info("merging the search index's pending list works again")
                self._failing = False
            if not self._again:
                return

    async def close(self) -> None:
        """Stops a merge in progress (PostgreSQL cancels it safely: what it merged stays merged)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
