"""Every read of events over gRPC takes its bytes from the process's read budget (AUDIT_READ_BUFFER_BYTES): when
another read holds all of it, each one waits and then fails with RESOURCE_EXHAUSTED; and calls cancelled in the
middle of their reads give back everything they held."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.api.live_feed import LiveFeed
from audit_service.api.read_budget import ReadBudget
from audit_service.api.server import start_server
from audit_service.store.pool import create_pool

from ..conftest import eventually, store_events
from ..factories import make_event

BUDGET_BYTES = 8 * 1024 * 1024
"""The process's read budget in these tests: a few pages."""


def large_events(count: int) -> list:
    rng = random.Random(3)
    events = []
    for i in range(count):
        event = make_event(message=f"large {i}")
        event.resource.type, event.resource.id = "blob", "shared"
        event.change.after.update({"blob": base64.b64encode(rng.randbytes(90_000)).decode()})
        events.append(event)
    return events


@dataclasses.dataclass
class BudgetedApi:
    stub: audit_service_pb2_grpc.AuditServiceStub
    budget: ReadBudget


@pytest.fixture
async def budgeted(config, database, nc) -> AsyncIterator[BudgetedApi]:
    """The real server (as `audit-service serve` assembles it) with a read budget the test can see and hold; a
    read waits at most 1 s for room."""
    await store_events(database, large_events(60))
    budget = ReadBudget(BUDGET_BYTES, wait_seconds=1)
    pool = await create_pool(config.database.url)
    feed = LiveFeed(nc, pool, config.tail, config.nats.committed_subject_prefix, read_budget=budget)
    await feed.start()
    running = await start_server(config.api, config.auth, pool, feed=feed, tail=config.tail, read_budget=budget)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield BudgetedApi(audit_service_pb2_grpc.AuditServiceStub(channel), budget)
    finally:
        await running.stop(0)
        await feed.close()
        await pool.close()


async def first_response(call) -> object:
    async for response in call:
        return response
    return None


READS = {
    "ListEvents": lambda stub: stub.ListEvents(pb.ListEventsRequest(page_size=100)),
    "ListResourceHistory": lambda stub: stub.ListResourceHistory(
        pb.ListResourceHistoryRequest(tenant="acme", resource_type="blob", resource_id="shared")
    ),
    "ExportEvents": lambda stub: first_response(stub.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV))),
    "VerifyChain": lambda stub: stub.VerifyChain(pb.VerifyChainRequest()),
}


@pytest.mark.parametrize("rpc", sorted(READS))
async def test_a_read_waits_for_the_process_budget_and_then_is_resource_exhausted(budgeted, rpc):
    async with budgeted.budget.reserve(BUDGET_BYTES):  # other reads hold every byte the process may hold
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await READS[rpc](budgeted.stub)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    await READS[rpc](budgeted.stub)  # and with room again, it is served
    assert budgeted.budget.available == BUDGET_BYTES


async def test_calls_cancelled_in_the_middle_of_their_reads_give_every_byte_back(budgeted):
    stub = budgeted.stub
    streams = [stub.TailEvents(pb.TailEventsRequest(after_position=0)) for _ in range(6)]
    streams += [stub.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON)) for _ in range(6)]
    for stream in streams:  # each has read a page and is reading the next when it is cancelled
        await first_response(stream)
    unary = [asyncio.ensure_future(READS[rpc](stub)) for rpc in sorted(READS) for _ in range(3)]
    await asyncio.sleep(0)
    for call in [*streams, *unary]:
        call.cancel()
    for call in unary:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await call

    async def all_given_back() -> bool:
        return budgeted.budget.available == BUDGET_BYTES

    await eventually(all_given_back, what="every reservation given back")
