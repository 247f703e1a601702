"""TailEvents under load: subscribers with random filters and start cursors, disconnecting and resuming from
their checkpoints at random and pausing past their buffer, while two ingest workers append tens of thousands
of events."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.config import load_config

from ..conftest import eventually, serving_api
from ..factories import make_event

pytestmark = pytest.mark.slow

EVENTS = 20_000
ACTIONS = ("api_key.create", "api_key.delete", "user.login", "secret.read", "deploy.create")
OUTCOMES = (event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED)


def random_event(rng: random.Random) -> event_pb2.AuditEvent:
    words = rng.choice(("rotated the key", "ΟΔΟΣ closed", "logged in", "read a secret"))
    return make_event(
        tenant=rng.choice(("acme", "globex")),
        action=rng.choice(ACTIONS),
        outcome=rng.choice(OUTCOMES),
        actor=event_pb2.Subject(id=f"user-{rng.randrange(10)}", type=event_pb2.SUBJECT_TYPE_USER, slug="someone"),
        message=f"{words} #{rng.randrange(10**6)}",
    )


not_secret_reads = pb.Condition(
    field=pb.CONDITION_FIELD_ACTION, operator=pb.CONDITION_OPERATOR_NOT_EQUAL, values=["secret.read"]
)


def random_filter(rng: random.Random) -> pb.EventFilter:
    return rng.choice(
        (
            pb.EventFilter(),
            pb.EventFilter(tenant="acme"),
            pb.EventFilter(tenant="globex", actions=["api_key.*"]),
            pb.EventFilter(actor_ids=[f"user-{rng.randrange(10)}", f"user-{rng.randrange(10)}"]),
            pb.EventFilter(tenant="acme", outcomes=[event_pb2.OUTCOME_DENIED]),
            pb.EventFilter(search="ROTATED"),
            pb.EventFilter(tenant="globex", search="οδος"),  # outside ASCII: decided by the database
            pb.EventFilter(query="-action:user.login actor.id:user-3"),
            pb.EventFilter(
                conditions=[
                    pb.Condition(
                        field=pb.CONDITION_FIELD_ACTION,
                        operator=pb.CONDITION_OPERATOR_NOT_EQUAL,
                        values=["secret.read"],
                    )
                ]
            ),
        )
    )


class Subscriber:
    """Tails with one filter; disconnects at random and resumes after its last checkpoint."""

    def __init__(
        self,
        api,
        rng: random.Random,
        request_filter: pb.EventFilter,
        start: int | None,
        *,
        stall_until: asyncio.Event | None = None,
    ) -> None:
        self.api, self.rng, self.filter = api, rng, request_filter
        self.stall_until = stall_until
        """When set: after its first caught_up, this subscriber stops reading until the event is set."""
        self.start = start
        self.checkpoint = start
        self.positions: list[int] = []
        self.ids: list[str] = []
        self.reconnects = 0
        self.fell_behind = 0
        """Times it caught up again on one connection: it overflowed its buffer and went back to the log."""

    async def run(self, final_head: asyncio.Future[int]) -> None:
        while not (final_head.done() and self.checkpoint is not None and self.checkpoint >= final_head.result()):
            request = pb.TailEventsRequest(filter=self.filter)
            if self.checkpoint is not None:
                request.after_position = self.checkpoint
            call = self.api.TailEvents(request)
            # Responses before this subscriber drops the connection; a staller keeps its first one until it fell behind.
            stalling = self.stall_until is not None and not self.reconnects
            # The first connection drops early, so even a subscriber whose filter sends little (a caught_up, then a
            # checkpoint a second) resumes at least once; later ones drop after 1 to 59 responses.
            budget = self.rng.randrange(1, 60 if self.reconnects else 3)
            caught_up = 0
            try:
                async for response in call:
                    if self.rng.random() < 0.02:  # a pause long enough to overflow its small buffer
                        await asyncio.sleep(self.rng.uniform(0.1, 0.6))
                    if self.start is None:  # started "now": the first checkpoint is where it starts
                        self.start = response.checkpoint_position
                    self.positions.extend(event.position for event in response.events)
                    self.ids.extend(event.event_id for event in response.events)
                    self.checkpoint = response.checkpoint_position
                    caught_up += response.caught_up
                    self.fell_behind += caught_up > 1 and response.caught_up
                    if stalling and caught_up == 1 and response.caught_up:
                        await self.stall_until.wait()
                    stalling = stalling and not self.fell_behind
                    budget -= 0 if stalling else 1
                    if budget == 0 or (final_head.done() and self.checkpoint >= final_head.result()):
                        break
            except grpc.aio.AioRpcError as error:
                pytest.fail(f"tail failed: {error.code()} {error.details()}")
            finally:
                call.cancel()
            self.reconnects += 1


async def expected_ids(api, request_filter: pb.EventFilter, after: int) -> list[tuple[int, str]]:
    """What the filter selects after `after`, as ListEvents (SQL) says, oldest first."""
    found, token = [], ""
    while True:
        page = await api.ListEvents(
            pb.ListEventsRequest(filter=request_filter, order=pb.ORDER_OLDEST_FIRST, page_size=1000, page_token=token)
        )
        found.extend((event.position, event.event_id) for event in page.events if event.position > after)
        token = page.next_page_token
        if not token:
            return found


async def test_random_subscribers_receive_exactly_their_filtered_sequence_while_two_workers_ingest(
    service_env, start_worker, publisher, owner
):
    seed = random.randrange(10**6)
    print(f"seed {seed}")
    rng = random.Random(seed)
    config = load_config(env={**service_env, "AUDIT_TAIL_BUFFER_EVENTS": "300"})
    async with (
        serving_api(config) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        # Without BDP probing the stream window stays at 64 KB: a stalled reader stalls the server's writes soon.
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]) as narrow,
    ):
        api = audit_service_pb2_grpc.AuditServiceStub(channel)
        await run_subscribers(api, audit_service_pb2_grpc.AuditServiceStub(narrow), rng, start_worker, publisher, owner)


async def run_subscribers(api, narrow_api, rng: random.Random, start_worker, publisher, owner) -> None:
    await start_worker()
    await start_worker()

    async def publish(count: int) -> None:
        for start in range(0, count, 200):
            await asyncio.gather(*(publisher.publish(random_event(rng)) for _ in range(min(200, count - start))))

    await publish(2_000)  # some history before anyone subscribes
    await eventually(lambda: _stored(owner, 2_000), within=60, what="the first events stored")
    final_head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    subscribers = [
        Subscriber(api, random.Random(rng.random()), random_filter(rng), rng.choice((0, rng.randrange(2_000), None)))
        for _ in range(8)
    ]
    subscribers.append(Subscriber(api, random.Random(rng.random()), pb.EventFilter(), 0))  # the whole log
    half_published = asyncio.Event()
    staller = Subscriber(narrow_api, random.Random(rng.random()), pb.EventFilter(), None, stall_until=half_published)
    subscribers.append(staller)
    tasks = [asyncio.create_task(subscriber.run(final_head)) for subscriber in subscribers]
    await publish(EVENTS // 2)
    half_published.set()  # the staller reads again while events still arrive, so it also drops and resumes later
    await publish(EVENTS // 2 - 2_000)
    await eventually(lambda: _stored(owner, EVENTS), within=120, what="every event stored")
    final_head.set_result(await owner.fetchval("SELECT last_position FROM audit_log_head"))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    for subscriber in subscribers:
        expected = await expected_ids(api, subscriber.filter, subscriber.start)
        assert subscriber.positions == [position for position, _ in expected], (
            f"filter {subscriber.filter} after {subscriber.start}"
        )
        assert subscriber.ids == [event_id for _, event_id in expected]
        assert subscriber.reconnects > 1
    assert len(subscribers[-2].ids) == EVENTS
    assert sum(len(subscriber.ids) for subscriber in subscribers) > EVENTS
    assert sum(subscriber.fell_behind for subscriber in subscribers) > 0, "some paused past their buffer"
    assert staller.fell_behind > 0, "the staller overflowed its buffer, read the log and caught up again"


async def _stored(owner, count: int) -> bool:
    return await owner.fetchval("SELECT count(*) FROM audit_events") >= count
