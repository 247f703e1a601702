"""Memory is bounded by bytes, not rows: tails that never read and many concurrent pages of large events keep the
API's memory within a bound, while every reader still gets every event."""

from __future__ import annotations

import asyncio
import base64
import random

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc

from ..conftest import store_events
from ..factories import make_event

pytestmark = pytest.mark.slow

EVENTS = 500
EVENT_BYTES = 240 * 1024
UNREAD_TAILS = 20
CONCURRENT_PAGES = 16
RSS_GROWTH_BOUND = 400 * 2**20
"""The bound README.md documents for this load (AUDIT_READ_BUFFER_BYTES and the per-stream pages at their
defaults). Before pages were sized by bytes, each unread tail alone held about 140 MiB of these events."""


def large_events(count: int) -> list:
    rng = random.Random(7)
    events = []
    for i in range(count):
        event = make_event(message=f"large event {i}")
        blob = base64.b64encode(rng.randbytes(EVENT_BYTES * 3 // 4)).decode()  # incompressible, like real states
        event.change.after.update({"name": f"large-{i}", "blob": blob})
        events.append(event)
    return events


@pytest.mark.timeout(600)
async def test_unread_tails_and_concurrent_pages_of_large_events_keep_memory_bounded(api_process, database):
    ids = await store_events(database, large_events(EVENTS))
    api = api_process()
    await api.start().ready()
    target = f"127.0.0.1:{int(api.env['AUDIT_GRPC_ADDRESS'].rsplit(':', 1)[1])}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(UNREAD_TAILS + 1)]
    stubs = [audit_service_pb2_grpc.AuditServiceStub(channel) for channel in channels]
    reader = stubs[-1]
    try:
        await reader.ListEvents(pb.ListEventsRequest(page_size=5))  # warm: imports, pool, plans
        rss_before = rss_peak = api.rss_bytes()
        sampling_done = asyncio.Event()

        async def sample_rss() -> None:
            nonlocal rss_peak
            while not sampling_done.is_set():
                rss_peak = max(rss_peak, api.rss_bytes())
                await asyncio.sleep(0.05)

        sampling = asyncio.create_task(sample_rss())
        # Readers that never read: each stream starts from the beginning of the log and stalls on flow control.
        tails = [stub.TailEvents(pb.TailEventsRequest(after_position=0)) for stub in stubs[:UNREAD_TAILS]]
        await asyncio.sleep(3)

        async def page() -> pb.ListEventsResponse:
            return await reader.ListEvents(pb.ListEventsRequest(page_size=1000, order=pb.ORDER_OLDEST_FIRST))

        for _ in range(3):
            pages = await asyncio.gather(*(page() for _ in range(CONCURRENT_PAGES)))
        await asyncio.sleep(1)
        sampling_done.set()
        await sampling

        growth = rss_peak - rss_before
        print(
            f"\n{UNREAD_TAILS} unread tails and {CONCURRENT_PAGES} concurrent ListEvents of 1,000 over {EVENTS} events "
            f"of {EVENT_BYTES // 1024} KiB: API RSS {rss_before / 2**20:.0f} MiB before, {rss_peak / 2**20:.0f} MiB "
            f"at most (+{growth / 2**20:.0f} MiB; bound {RSS_GROWTH_BOUND / 2**20:.0f} MiB)"
        )
        # Each page is cut by bytes, and is the start of the log; walking on gives every event once.
        first = pages[0]
        assert 1 <= len(first.events) < 20 and first.next_page_token
        assert first.ByteSize() <= 4 * 2**20
        walked, token = [], ""
        while True:
            response = await reader.ListEvents(
                pb.ListEventsRequest(page_size=1000, order=pb.ORDER_OLDEST_FIRST, page_token=token)
            )
            walked += [event.event_id for event in response.events]
            token = response.next_page_token
            if not token:
                break
        assert walked == ids
        # A tail that stalled still gets everything, in order, once it reads.
        got: list[str] = []
        async for response in tails[0]:
            got += [event.event_id for event in response.events]
            if response.caught_up:
                break
        assert got == ids
        assert growth < RSS_GROWTH_BOUND
    finally:
        for channel in channels:
            await channel.close()
