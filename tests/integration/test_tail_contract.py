"""TailEvents' contract on a real server: ListEvents' access control, errors naming their field, checkpoints and
heartbeats, the end of streams (cancelled by clients, ended by a shutdown) and a slow subscriber's fallback."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.config import load_config
from google.protobuf import timestamp_pb2

from ..conftest import bearer, eventually, serving_api, serving_stub, store_events
from ..factories import make_event
from ..tail_helpers import Reader, caught_up


def by(tenant: str, actor_id: str, **overrides: object) -> event_pb2.AuditEvent:
    actor = event_pb2.Subject(id=actor_id, slug=actor_id, type=event_pb2.SUBJECT_TYPE_USER)
    return make_event(tenant, actor=actor, **overrides)


async def log_head(owner) -> int:
    return await owner.fetchval("SELECT last_position FROM audit_log_head")


async def wait_for_head(owner, position: int) -> None:
    async def reached() -> bool:
        return await log_head(owner) >= position

    await eventually(reached, what=f"the log's head at {position}")


async def refusal(call) -> grpc.aio.AioRpcError:
    """The status a stream ends with before sending anything (the timeout only keeps a wrong answer from hanging)."""
    async with asyncio.timeout(30):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for response in call:
                pytest.fail(f"the stream sent a response instead of an error: {response}")
    return error.value


# Access control: exactly ListEvents' (tests/integration/test_auth.py), in history and live.


async def publish_one(publisher, event: event_pb2.AuditEvent) -> str:
    return (await publisher.publish(event)).event_id


async def publish_all(publisher, events: list[event_pb2.AuditEvent]) -> list[str]:
    """Publishes one after the other: with one worker, their positions follow this order."""
    return [await publish_one(publisher, event) for event in events]


async def mixed_history(database) -> dict[str, list[str]]:
    """acme: 6 by alice, 4 by bob; globex: 5 by alice (same actor id, other tenant)."""
    return {
        "acme/alice": await store_events(database, [by("acme", "u-alice") for _ in range(6)]),
        "globex/alice": await store_events(database, [by("globex", "u-alice") for _ in range(5)]),
        "acme/bob": await store_events(database, [by("acme", "u-bob") for _ in range(4)]),
    }


async def mixed_live(publisher) -> dict[str, list[str]]:
    """5 events each by acme/alice, acme/bob and globex/alice, published through NATS, interleaved (a leak cannot
    hide after the last event the test waits for)."""
    ids: dict[str, list[str]] = {"acme/alice": [], "acme/bob": [], "globex/alice": []}
    for _ in range(5):
        ids["globex/alice"] += await publish_all(publisher, [by("globex", "u-alice")])
        ids["acme/bob"] += await publish_all(publisher, [by("acme", "u-bob")])
        ids["acme/alice"] += await publish_all(publisher, [by("acme", "u-alice")])
    return ids


async def tail_history_then_live(secured, token, database, owner, start_worker, publisher, request_filter=None):
    """A tail from the start of the log, read to its end once history is read and once live events are in."""
    history = await mixed_history(database)
    reader = Reader(
        secured.stub.TailEvents(pb.TailEventsRequest(filter=request_filter, after_position=0), metadata=bearer(token))
    )
    await reader.until(caught_up, what="caught_up")
    history_ids = reader.ids
    head = await log_head(owner)
    await start_worker()
    live = await mixed_live(publisher)
    await wait_for_head(owner, head + 15)
    head = await log_head(owner)
    # Every position, also the other tenant's and other actors', has been examined: nothing more is coming.
    await reader.until(lambda r: r.checkpoint >= head, what=f"a checkpoint at the head {head}")
    assert reader.in_order_once()
    await reader.close()
    return history, history_ids, live, reader.ids[len(history_ids) :]


async def test_an_admin_tail_sees_its_whole_tenant_and_nothing_of_another(
    secured, database, owner, start_worker, publisher
):
    admin = secured.token("acme", "u-admin", admin=True)
    history, history_ids, live, live_ids = await tail_history_then_live(
        secured, admin, database, owner, start_worker, publisher
    )
    assert set(history_ids) == set(history["acme/alice"] + history["acme/bob"])
    assert set(live_ids) == set(live["acme/alice"] + live["acme/bob"])


async def test_a_user_tail_sees_only_its_own_actions(secured, database, owner, start_worker, publisher):
    alice = secured.token("acme", "u-alice")
    history, history_ids, live, live_ids = await tail_history_then_live(
        secured, alice, database, owner, start_worker, publisher
    )
    assert set(history_ids) == set(history["acme/alice"])
    assert set(live_ids) == set(live["acme/alice"])


async def test_a_user_asking_for_another_actor_gets_nothing_not_more(secured, database, owner, start_worker, publisher):
    alice = secured.token("acme", "u-alice")
    _, history_ids, _, live_ids = await tail_history_then_live(
        secured, alice, database, owner, start_worker, publisher, pb.EventFilter(actor_ids=["u-bob"])
    )
    assert history_ids == live_ids == []


async def test_a_tail_of_another_tenant_is_denied_and_one_without_a_token_unauthenticated(secured, database):
    await mixed_history(database)
    for token in (secured.token("acme", "u-admin", admin=True), secured.token("acme", "u-alice")):
        for start in ({}, {"after_position": 0}):
            error = await refusal(
                secured.stub.TailEvents(
                    pb.TailEventsRequest(filter=pb.EventFilter(tenant="globex"), **start), metadata=bearer(token)
                )
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "filter.tenant" in error.details()

    for metadata in ((), bearer("not-a-jwt"), bearer(secured.token(ttl=-3600))):
        error = await refusal(secured.stub.TailEvents(pb.TailEventsRequest(after_position=0), metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()


# Errors: INVALID_ARGUMENT naming the field, never INTERNAL.


def timestamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"after_position": -1}, "after_position"),
        ({"after_position": 4}, "after_position"),  # the log's head is 3
        ({"after_position": 2**63 - 1}, "after_position"),
        ({"from_time": timestamp(-(10**13))}, "from_time"),
        ({"from_time": timestamp(10**13)}, "from_time"),
        ({"from_time": timestamp(1_700_000_000, -1)}, "from_time"),
        ({"from_time": timestamp(1_700_000_000, 1_000_000_000)}, "from_time"),
        ({"filter": pb.EventFilter(actions=["bad action!"])}, "filter.actions[0]"),
        ({"filter": pb.EventFilter(actions=["api_key.create", "*"]), "after_position": 0}, "filter.actions[1]"),
        ({"filter": pb.EventFilter(start_time=timestamp(-(10**13)))}, "filter.start_time"),
    ],
)
async def test_a_malformed_request_is_invalid_argument_naming_the_field(api, database, request_fields, field):
    await store_events(database, [make_event() for _ in range(3)])
    error = await refusal(api.TailEvents(pb.TailEventsRequest(**request_fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: "), error.details()


async def test_the_head_itself_is_a_valid_start(api, database):
    await store_events(database, [make_event() for _ in range(3)])
    reader = Reader(api.TailEvents(pb.TailEventsRequest(after_position=3)))
    await reader.until(caught_up, what="caught_up")
    assert reader.responses[0].caught_up and reader.responses[0].checkpoint_position == 3
    await reader.close()


# Checkpoints and heartbeats.


def tail_env(service_env: dict[str, str], **settings: str) -> dict[str, str]:
    return service_env | {f"AUDIT_TAIL_{name.upper()}": value for name, value in settings.items()}


async def test_a_tail_that_matches_nothing_checkpoints_past_other_actions(service_env, owner, start_worker, publisher):
    # No heartbeats during the test: every message after caught_up is a checkpoint.
    env = tail_env(service_env, heartbeat_seconds="3600", checkpoint_seconds="0.1")
    async with serving_stub(env) as stub:
        request_filter = pb.EventFilter(tenant="acme", actions=["secret.read"])
        reader = Reader(stub.TailEvents(pb.TailEventsRequest(filter=request_filter)))
        await reader.until(caught_up, what="caught_up")
        await start_worker()
        heads = []
        for _ in range(3):
            await publish_all(
                publisher, [make_event() for _ in range(10)] + [make_event("globex", action="secret.read")]
            )
            await wait_for_head(owner, (heads[-1] if heads else 0) + 11)
            heads.append(await log_head(owner))
            await reader.until(lambda r: r.checkpoint >= heads[-1], what=f"a checkpoint at {heads[-1]}")
        await reader.close()

    assert reader.events == []
    marker, *checkpoints = reader.responses
    assert marker.caught_up and marker.checkpoint_position == 0
    assert checkpoints and not any(message.caught_up or message.heartbeat for message in checkpoints)
    positions = [message.checkpoint_position for message in checkpoints]
    assert positions == sorted(set(positions))
    assert set(heads) <= set(positions), (heads, positions)


async def test_an_idle_tail_sends_heartbeats_at_its_position(service_env, database):
    await store_events(database, [make_event() for _ in range(4)])
    env = tail_env(service_env, heartbeat_seconds="0.1", checkpoint_seconds="0.1")
    async with serving_stub(env) as stub:
        reader = Reader(stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"), after_position=1)))
        await reader.until(lambda r: sum(message.heartbeat for message in r.responses) >= 3, what="3 heartbeats")
        await reader.close()

    assert len(reader.events) == 3
    beats = reader.responses[[message.caught_up for message in reader.responses].index(True) + 1 :]
    assert beats and all(message.heartbeat and not message.events for message in beats)
    assert {message.checkpoint_position for message in beats} == {4}


async def test_history_that_matches_nothing_ends_caught_up_at_the_head(api, database):
    await store_events(database, [make_event() for _ in range(2500)] + [make_event("globex") for _ in range(500)])
    for request_filter in (
        pb.EventFilter(actions=["secret.read"]),
        pb.EventFilter(tenant="acme", search="no such words anywhere"),
        pb.EventFilter(tenant="initech"),
    ):
        reader = Reader(api.TailEvents(pb.TailEventsRequest(filter=request_filter, after_position=0)))
        await reader.until(caught_up, what="caught_up")
        await reader.close()
        assert reader.events == []
        marker = next(message for message in reader.responses if message.caught_up)
        assert marker.checkpoint_position == 3000, request_filter


# Lifecycle: cancelled streams and a server shutdown.


def bulky(tenant: str = "acme", **overrides: object) -> event_pb2.AuditEvent:
    """An event of ~32 KB (a large metadata value): a few MB of them exceed what gRPC flow control buffers."""
    event = make_event(tenant, **overrides)
    event.metadata["diff"] = f"{event.resource.id}:" + "0123456789abcdef" * 2048
    return event


def running_tasks() -> Counter[str]:
    """The event loop's tasks by what they run. (gRPC's server always waits for the next call in a task, a new one
    after each call: the same work, another task.)"""
    return Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())


async def test_cancelled_streams_free_their_subscriptions_and_tasks(config, database, caplog):
    # Enough history that the streams of clients that never read are stalled in the middle of it.
    await store_events(database, [bulky() for _ in range(500)])
    async with (
        serving_api(config) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        await channel.channel_ready()
        tasks_before = running_tasks()
        requests = [
            pb.TailEventsRequest(),
            pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme")),
            pb.TailEventsRequest(filter=pb.EventFilter(actions=["secret.*"]), after_position=0),
            pb.TailEventsRequest(filter=pb.EventFilter(tenant="globex"), after_position=0),
        ]
        readers = [Reader(stub.TailEvents(request)) for request in requests]
        for reader in readers:
            await reader.until(caught_up, what="caught_up")
        stalled = [stub.TailEvents(pb.TailEventsRequest(after_position=0)) for _ in range(3)]
        total = len(readers) + len(stalled)

        async def all_subscribed() -> bool:
            return server.feed.subscriber_count == total

        await eventually(all_subscribed, what=f"{total} subscriptions")
        for reader in readers:
            await reader.close()
        for call in stalled:
            call.cancel()

        async def all_freed() -> bool:
            return server.feed.subscriber_count == 0

        await eventually(all_freed, what="every subscription freed")

        async def no_tasks_left() -> bool:
            return not running_tasks() - tasks_before

        await eventually(no_tasks_left, what="the streams' tasks to end")
    # A client that goes away mid-write is a normal end for a tail, not an error with a traceback in the log.
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING and "grpc" in record.name]


async def test_a_shutdown_ends_tails_with_unavailable_naming_where_to_resume(
    config, service_env, database, start_worker, publisher
):
    history = await store_events(database, [make_event() for _ in range(5)])
    channel = None
    try:
        async with serving_api(config) as server:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            readers = [
                Reader(stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"), after_position=2))),
                Reader(stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(actions=["secret.read"])))),
                Reader(stub.TailEvents(pb.TailEventsRequest())),
            ]
            for reader in readers:
                await reader.until(caught_up, what="caught_up")
        # serving_api's exit stopped the server (RunningServer.stop, the same as SIGTERM).
        for reader in readers:
            async with asyncio.timeout(30):
                await reader.task
            assert reader.error is not None and reader.error.code() == grpc.StatusCode.UNAVAILABLE, reader.error
            resume_at = re.search(r"after_position=(\d+)", reader.error.details())
            assert resume_at, reader.error.details()
            assert int(resume_at.group(1)) == reader.checkpoint == 5
        assert readers[0].ids == history[2:]
    finally:
        if channel is not None:
            await channel.close()

    # Resuming where the details say, on a new server, misses nothing committed while there was none.
    await start_worker()
    later = await publish_all(publisher, [make_event() for _ in range(3)])
    async with serving_stub(service_env) as stub:
        reader = Reader(stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"), after_position=5)))
        await reader.until(lambda r: len(r.ids) >= 3, what="the events committed while no server ran")
        await reader.close()
    assert reader.ids == later


# A slow subscriber: its buffer overflows, it falls back to the log, and it loses nothing.


async def test_a_subscriber_that_stops_reading_falls_back_to_the_log_and_gets_every_event_once(
    service_env, owner, start_worker, publisher
):
    async with serving_stub(tail_env(service_env, buffer_events="50")) as stub:
        reader = Reader(stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant="acme"))))
        await reader.until(caught_up, what="caught_up")
        reader.pause()
        # Appends of at most 10 events, each offered whole to the stream: only a stream that does not take what it
        # is offered can fall more than 50 behind.
        await start_worker(load_config(env=service_env | {"AUDIT_INGEST_BATCH_SIZE": "10"}))
        # 2,000 events of ~32 KB, ~64 MB: far more than gRPC flow control and the sockets buffer (here ~3 MB did not
        # stall the server's writes, ~10 MB did), so the live feed offers the stream far more than 50 events it
        # cannot take.
        acme: list[str] = []
        for _ in range(20):
            acme += await asyncio.gather(*(publish_one(publisher, bulky()) for _ in range(100)))
            await publish_all(publisher, [bulky("globex")])
        await wait_for_head(owner, len(acme) + 20)
        reader.resume()
        in_log = await owner.fetch("SELECT event_id::text FROM audit_events WHERE tenant = 'acme' ORDER BY position")
        await reader.until(lambda r: len(r.events) >= 2000, within=120, what="every event")
        await reader.close()

    assert reader.ids == [row["event_id"] for row in in_log]
    assert set(reader.ids) == set(acme)
    assert reader.in_order_once()
    assert sum(message.caught_up for message in reader.responses) >= 2, "it never fell back to the log"
