"""The doorbell between rule evaluation and the destinations of the react process."""

from __future__ import annotations

import asyncio

from audit_service.delivery.doorbell import Doorbell
from audit_service.waiting import pause


async def test_a_ticket_taken_before_a_ring_is_woken_by_it_and_one_taken_after_is_not():
    doorbell = Doorbell()
    before = doorbell.ticket()
    doorbell.ring()
    after = doorbell.ticket()
    await asyncio.wait_for(pause(3600, until=before), timeout=5)  # woken at once, not after an hour
    assert before.is_set() and not after.is_set()
    waiting = asyncio.create_task(pause(3600, until=after))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    doorbell.ring()
    await asyncio.wait_for(waiting, timeout=5)


async def test_without_a_ticket_the_wait_is_the_poll():
    waiting = asyncio.create_task(pause(0.05, until=None))
    await asyncio.wait_for(waiting, timeout=5)
