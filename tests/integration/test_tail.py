"""TailEvents over a real server: history, the switch to live, checkpoints, heartbeats, starts and errors."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2

from ..conftest import store_events
from ..factories import make_event


class Reader:
    """Reads a TailEvents stream in the background, keeping every response."""

    def __init__(self, call) -> None:
        self.call = call
        self.responses: list[pb.TailEventsResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.append(response)
        except grpc.aio.AioRpcError as error:
            self.error = error

    @property
    def events(self) -> list[event_pb2.AuditEvent]:
        return [event for response in self.responses for event in response.events]

    @property
    def ids(self) -> list[str]:
        return [event.event_id for event in self.events]

    async def until(self, check, within: float = 30.0, what: str = "the stream") -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not check(self):
            if self.task.done():
                pytest.fail(f"stream ended ({self.error}) before {what}")
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}; got {len(self.responses)} responses")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def caught_up(reader: Reader) -> bool:
    return any(response.caught_up for response in reader.responses)


async def test_history_then_live_in_position_order_without_repeats(api, database, start_worker, publisher):
    history = await store_events(database, [make_event() for _ in range(30)])
    await store_events(database, [make_event(tenant="globex") for _ in range(5)])
    reader = Reader(api.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"), after_position=0)))
    await reader.until(caught_up, what="caught_up")
    assert reader.ids == history
    marker = next(response for response in reader.responses if response.caught_up)
    assert marker.checkpoint_position == 35 and not marker.events

    await start_worker()
    live = []
    for _ in range(20):
        live.append((await publisher.publish(make_event())).event_id)
        await publisher.publish(make_event(tenant="globex"))
    await reader.until(lambda r: len(r.events) == 50, what="the live events")
    assert reader.ids == history + live
    positions = [event.position for event in reader.events]
    assert positions == sorted(set(positions))
    # A live event is exactly what the log returns for it.
    stored = await api.GetEvent(pb.GetEventRequest(event_id=live[-1]))
    assert reader.events[-1] == stored.event
    await reader.close()


async def test_a_tail_from_now_starts_with_caught_up_at_the_head(api, database, start_worker, publisher):
    await store_events(database, [make_event() for _ in range(10)])
    reader = Reader(api.TailEvents(pb.TailEventsRequest()))
    await reader.until(caught_up, what="caught_up")
    assert reader.responses[0].caught_up and reader.responses[0].checkpoint_position == 10
    await start_worker()
    event_id = (await publisher.publish(make_event())).event_id
    await reader.until(lambda r: r.ids == [event_id], what="the new event")
    await reader.close()


async def test_a_tail_from_a_time_starts_with_the_first_event_recorded_then(api, database, owner):
    await store_events(database, [make_event() for _ in range(20)])
    await owner.execute("SELECT pg_sleep(0.01)")
    moment = dt.datetime.now(dt.UTC)
    later = await store_events(database, [make_event() for _ in range(7)])
    request = pb.TailEventsRequest()
    request.from_time.FromDatetime(moment)
    reader = Reader(api.TailEvents(request))
    await reader.until(caught_up, what="caught_up")
    assert reader.ids == later
    await reader.close()
