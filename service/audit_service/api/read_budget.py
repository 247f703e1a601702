"""The process's bound on what its reads hold: bytes of events fetched from PostgreSQL and not yet turned into
the messages that are sent (AUDIT_READ_BUFFER_BYTES).

Each read asks for its own bound (a page's byte budget) before it queries, gives back what it did not use as soon
as its rows are in, and the rest once they are converted. Reads that do not fit wait in arrival order, so a large
read is not starved by small ones; one that waits longer than `wait_seconds` fails with RESOURCE_EXHAUSTED, and
the client retries. Nothing is held while a response waits for a slow client: what a stream keeps then is
bounded per stream (a page or two), see api/tail.py and api/export.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from ..errors import ResourceExhaustedError


class Reservation:
    """Bytes held by one read; `keep()` gives back what it turned out not to need."""

    def __init__(self, budget: ReadBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def keep(self, size: int) -> None:
        """Holds only `size` bytes from now on (never more than reserved)."""
        size = max(0, min(size, self.size))
        self._budget.release(self.size - size)
        self.size = size


class ReadBudget:
    """At most `total_bytes` reserved at once by the reads of this process.

    Args:
        total_bytes: the bound (a read asking for more is given all of it, alone).
        wait_seconds: how long a read waits for room before it fails with ResourceExhaustedError.
    """

    def __init__(self, total_bytes: int, *, wait_seconds: float = 30.0) -> None:
        self.total_bytes = total_bytes
        self.available = total_bytes
        self._wait_seconds = wait_seconds
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def reserved(self) -> int:
        return self.total_bytes - self.available

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[Reservation]:
        """Holds `size` bytes (at most the total) for the block; waits for room first.

        Raises:
            ResourceExhaustedError: no room within `wait_seconds`.
        """
        size = min(size, self.total_bytes)
        await self._acquire(size)
        reservation = Reservation(self, size)
        try:
            yield reservation
        finally:
            self.release(reservation.size)
            reservation.size = 0

    async def _acquire(self, size: int) -> None:
        if not self._waiting and self.available >= size:
            self.available -= size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self._wait_seconds):
                await waiter  # _grant() takes the bytes off `available` on our behalf
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted just as the wait ended: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
                self._grant()  # those queued behind it may fit now
            if isinstance(error, TimeoutError):
                raise ResourceExhaustedError(
                    "the server is reading as many events as it may hold at once; retry with backoff"
                ) from None
            raise

    def release(self, size: int) -> None:
        self.available += size
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            size, waiter = self._waiting[0]
            if waiter.done():
                self._waiting.popleft()
                continue
            if self.available < size:
                return
            self._waiting.popleft()
            self.available -= size
            waiter.set_result(None)
