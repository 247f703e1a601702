"""Publisher.publish_many: many JetStream acknowledgements in flight, a bounded window, one result per event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import audit_client
import pytest
from audit.v1 import event_pb2
from nats.aio.client import Client as NatsClient

from ..factories import make_event


@pytest.fixture
async def stream(nc: NatsClient, names: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    """A JetStream stream of tenant acme's events under the test's own subject prefix: (prefix, stream name)."""
    prefix, name = names["AUDIT_SUBJECT_PREFIX"], f"{names['AUDIT_STREAM_PREFIX']}_CLIENT"
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{prefix}.acme"])
    yield prefix, name
    await js.delete_stream(name)


async def test_every_event_is_acknowledged_in_the_order_given(nats_url, nc, stream):
    prefix, name = stream
    events = [make_event() for _ in range(1000)]
    async with audit_client.connect(nats_url, subject_prefix=prefix) as publisher:
        acks = await publisher.publish_many(events, window=64)

    assert [ack.sequence for ack in acks] == list(range(1, 1001)), "one connection keeps the order"
    assert {ack.stream for ack in acks} == {name} and not any(ack.duplicate for ack in acks)
    assert not any(event.event_id for event in events), "the events given are not modified"
    js = nc.jetstream()
    assert (await js.stream_info(name)).state.messages == 1000
    for index in (0, 499, 999):
        stored = await js.get_msg(name, acks[index].sequence)
        assert stored.headers["Nats-Msg-Id"] == acks[index].event_id
        decoded = event_pb2.AuditEvent.FromString(stored.data)
        assert decoded.event_id == acks[index].event_id
        assert decoded.resource.id == events[index].resource.id


async def test_the_window_bounds_the_acknowledgements_awaited_at_once(nats_url, nc, names):
    # A responder in JetStream's place holds its replies until `window` messages wait for one, then answers them:
    # a publisher that kept more in flight would be seen with more waiting; one that awaited each publish before
    # the next would never get an answer.
    prefix, window, total = names["AUDIT_SUBJECT_PREFIX"], 8, 50
    held: list = []
    received = 0
    most_waiting = 0

    async def respond(msg) -> None:
        nonlocal received, most_waiting
        received += 1
        held.append((msg, received))
        most_waiting = max(most_waiting, len(held))
        if len(held) == window or received == total:
            for waiting, sequence in held:
                await nc.publish(waiting.reply, json.dumps({"stream": "RESPONDER", "seq": sequence}).encode())
            held.clear()

    await nc.subscribe(f"{prefix}.acme", cb=respond)
    await nc.flush()
    async with audit_client.connect(nats_url, subject_prefix=prefix, ack_timeout=20) as publisher:
        acks = await publisher.publish_many([make_event() for _ in range(total)], window=window)
    assert most_waiting == window
    assert [ack.sequence for ack in acks] == list(range(1, total + 1))


async def test_events_not_acknowledged_are_named_and_the_others_are_stored(nats_url, nc, stream):
    prefix, name = stream
    tenants = ["acme", "nobody", "acme", "acme", "nobody", "acme"] * 20  # no stream takes tenant nobody's events
    events = [make_event(tenant=tenant) for tenant in tenants]
    async with audit_client.connect(nats_url, subject_prefix=prefix, ack_timeout=5) as publisher:
        with pytest.raises(audit_client.PublishBatchError) as raised:
            await publisher.publish_many(events, window=16)
    failure = raised.value
    assert isinstance(failure, audit_client.PublishError), "callers that retry on PublishError retry a batch too"
    missing = [index for index, tenant in enumerate(tenants) if tenant == "nobody"]
    assert sorted(failure.errors) == missing
    assert [index for index, ack in enumerate(failure.acks) if ack is None] == missing
    assert all("NoStreamResponseError" in str(error) for error in failure.errors.values())
    unacknowledged = failure.unacknowledged_events
    assert [event.resource.id for event in unacknowledged] == [events[index].resource.id for index in missing]
    assert [event.event_id for event in unacknowledged] == [failure.errors[index].event_id for index in missing]
    assert failure.event_id == unacknowledged[0].event_id
    stored = [ack for ack in failure.acks if ack is not None]
    assert [ack.sequence for ack in stored] == list(range(1, 81))
    assert (await nc.jetstream().stream_info(name)).state.messages == 80

    js = nc.jetstream()
    await js.add_stream(name=f"{name}_NOBODY", subjects=[f"{prefix}.nobody"])
    try:  # a retry of what was not acknowledged keeps the event ids, so the service would store each once
        async with audit_client.connect(nats_url, subject_prefix=prefix) as publisher:
            again = await publisher.publish_many(unacknowledged)
    finally:
        await js.delete_stream(f"{name}_NOBODY")
    assert [ack.event_id for ack in again] == [event.event_id for event in unacknowledged]


async def test_an_invalid_event_in_a_batch_sends_nothing(nats_url, nc, stream):
    prefix, name = stream
    events = [make_event() for _ in range(5)]
    events[3].tenant = "Not A Tenant"
    async with audit_client.connect(nats_url, subject_prefix=prefix) as publisher:
        with pytest.raises(audit_client.InvalidEventError) as raised:
            await publisher.publish_many(events)
        assert await publisher.publish_many([]) == []
    assert raised.value.field == "tenant"
    assert "events[3] is invalid: nothing of the batch was sent" in raised.value.__notes__
    assert (await nc.jetstream().stream_info(name)).state.messages == 0


async def test_a_window_wider_than_max_in_flight_waits_for_slots_instead_of_holding_them(nats_url, nc, stream):
    # Slots come back as acknowledgements arrive, not when the batch gets round to them: two batches sharing
    # a publisher of 4 slots, each with a window of 256, would otherwise each hold slots the other waits for.
    prefix, name = stream
    async with audit_client.connect(nats_url, subject_prefix=prefix, max_in_flight=4) as publisher:
        batches = await asyncio.wait_for(
            asyncio.gather(*(publisher.publish_many([make_event() for _ in range(100)]) for _ in range(2))), 60
        )
        assert len(await publisher.publish_many([make_event() for _ in range(10)])) == 10
    assert sorted(ack.sequence for batch in batches for ack in batch) == list(range(1, 201))
    assert (await nc.jetstream().stream_info(name)).state.messages == 210
