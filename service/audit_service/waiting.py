"""The one way the service's loops wait: for some seconds, or less when an event (stop, a doorbell) is set."""

from __future__ import annotations

import asyncio
import contextlib


async def pause(seconds: float, *, until: asyncio.Event | None) -> None:
    """Waits `seconds`, returning early when `until` is set (at once if it is already)."""
    if until is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until.wait(), timeout=seconds)
