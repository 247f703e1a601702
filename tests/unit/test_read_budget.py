"""ReadBudget: the bytes a process's reads hold at once, with waits in arrival order and no leaks."""

from __future__ import annotations

import asyncio

import pytest
from audit_service.api.read_budget import ReadBudget
from audit_service.errors import ResourceExhaustedError


async def test_reads_within_the_bound_do_not_wait_and_give_everything_back() -> None:
    budget = ReadBudget(100)
    async with budget.reserve(60) as first, budget.reserve(40):
        assert budget.available == 0
        first.keep(10)  # its rows turned out smaller
        assert budget.available == 50
    assert budget.available == 100


async def test_a_read_that_does_not_fit_waits_until_room_is_given_back() -> None:
    budget = ReadBudget(100)
    order: list[str] = []

    async def read(name: str, size: int, hold: asyncio.Event) -> None:
        async with budget.reserve(size):
            order.append(name)
            await hold.wait()

    hold_a, hold_b, hold_c = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(read("a", 80, hold_a))
    await asyncio.sleep(0)
    b = asyncio.create_task(read("b", 50, hold_b))  # waits: 20 left
    await asyncio.sleep(0)
    c = asyncio.create_task(read("c", 10, hold_c))  # fits, but waits behind b: arrival order
    await asyncio.sleep(0.01)
    assert order == ["a"]
    hold_a.set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"]
    hold_b.set()
    hold_c.set()
    await asyncio.gather(a, b, c)
    assert budget.available == 100


async def test_a_read_larger_than_the_bound_gets_all_of_it_alone() -> None:
    budget = ReadBudget(100)
    async with budget.reserve(10**9) as reservation:
        assert reservation.size == 100 and budget.available == 0
    assert budget.available == 100


async def test_a_wait_that_runs_out_is_resource_exhausted_and_leaves_nothing_behind() -> None:
    budget = ReadBudget(100, wait_seconds=0.05)
    async with budget.reserve(100):
        with pytest.raises(ResourceExhaustedError):
            async with budget.reserve(1):
                pass
    assert budget.available == 100
    async with budget.reserve(100):  # the queue is empty again
        pass


async def test_a_cancelled_wait_does_not_block_those_behind_it() -> None:
    budget = ReadBudget(100)
    release = asyncio.Event()

    async def hold(size: int) -> None:
        async with budget.reserve(size):
            await release.wait()

    holder = asyncio.create_task(hold(90))
    await asyncio.sleep(0)
    big = asyncio.create_task(hold(50))
    await asyncio.sleep(0)
    small = asyncio.create_task(hold(5))
    await asyncio.sleep(0.01)
    big.cancel()
    await asyncio.gather(big, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert budget.available == 5, "the small read behind the cancelled one got its room"
    release.set()
    await asyncio.gather(holder, small)
    assert budget.available == 100
