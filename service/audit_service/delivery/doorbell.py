"""A doorbell between the parts of the react process: rule evaluation rings it after each step it stored (new
events read, maybe alerts), and the caught-up destinations waiting for their next poll wake at once instead.

Polling stays the guarantee (another process may have stored, and a ring may come between a look and a wait); the
doorbell only cuts the wait. Take a ticket BEFORE looking for work, then wait on it (waiting.pause): a ring after
the look is never missed.
"""

from __future__ import annotations

import asyncio


class Doorbell:
    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        """What to wait on: set by the next ring."""
        return self._rung

    def ring(self) -> None:
        """Wakes everyone holding a ticket taken before now."""
        self._rung.set()
        self._rung = asyncio.Event()
