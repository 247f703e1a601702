"""TailEvents over a real server: history, the switch to live, checkpoints, heartbeats, starts and errors."""

from __future__ import annotations

import datetime as dt

from audit.v1 import audit_service_pb2 as pb

from ..conftest import store_events
from ..factories import make_event
from ..tail_helpers import Reader, caught_up


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


async def test_a_tail_from_a_future_time_sends_nothing_recorded_before_it(api, database):
    await store_events(database, [make_event() for _ in range(3)])
    request = pb.TailEventsRequest()
    request.from_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    reader = Reader(api.TailEvents(request))
    await reader.until(caught_up, what="caught_up")
    await store_events(database, [make_event() for _ in range(4)])  # recorded now: before from_time
    await reader.until(lambda r: r.responses[-1].checkpoint_position >= 7, what="a checkpoint past them")
    assert reader.ids == []
    await reader.close()
