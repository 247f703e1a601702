"""Reads stay within their limits on a real server: page sizes, response sizes a default gRPC client accepts,
and statements that run too long (by the service's limit or the client's deadline) end and free PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from google.protobuf import duration_pb2

from ..conftest import eventually, serving_stub, store_events
from ..factories import make_event

DEFAULT_CLIENT_LIMIT = 4 * 1024 * 1024
"""What a gRPC client accepts per message unless told otherwise."""


async def test_page_size_defaults_to_100_and_is_coerced_to_1000(api, database):
    await store_events(database, [make_event() for _ in range(1005)])

    assert len((await api.ListEvents(pb.ListEventsRequest())).events) == 100
    first = await api.ListEvents(pb.ListEventsRequest(page_size=5000))
    assert len(first.events) == 1000 and first.next_page_token
    rest = await api.ListEvents(pb.ListEventsRequest(page_size=5000, page_token=first.next_page_token))
    assert len(rest.events) == 5 and not rest.next_page_token


async def test_pages_of_large_events_end_early_so_a_default_client_receives_them(api, database):
    # 60 events whose new state is a ~100 KB document: 1,000 of them per page would be ~6 MB.
    events = []
    for i in range(60):
        event = make_event()
        event.change.after.update({"manifest": f"{i:04d}" + "x" * 100_000})
        events.append(event)
    stored = await store_events(database, events)

    listed, token, pages = [], "", 0
    while True:
        page = await api.ListEvents(pb.ListEventsRequest(page_size=1000, page_token=token, order=pb.ORDER_OLDEST_FIRST))
        assert page.ByteSize() <= DEFAULT_CLIENT_LIMIT
        listed.extend(event.event_id for event in page.events)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert listed == stored, "every event once, in order, across the short pages"
    assert pages >= 2


async def test_a_count_answer_over_the_response_limit_is_refused_naming_the_field(service_env, database):
    await store_events(database, [make_event() for _ in range(10)])
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=3)
    window = pb.EventFilter()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(start + dt.timedelta(days=4))

    async with serving_stub(service_env | {"AUDIT_MAX_RESPONSE_BYTES": "16384"}) as api:
        hourly = await api.CountEvents(
            pb.CountEventsRequest(filter=window, interval=duration_pb2.Duration(seconds=3600))
        )
        assert len(hourly.buckets) == 96 and hourly.total == 10
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # 5,760 one-minute buckets: ~70 KB
            await api.CountEvents(pb.CountEventsRequest(filter=window, interval=duration_pb2.Duration(seconds=60)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("interval: the answer would be ")
    assert "16,384-byte response limit" in refused.value.details()


async def api_statements_waiting(owner, database) -> int:
    return await owner.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'audit-service' "
        "AND wait_event_type = 'Lock'",
        database.name,
    )


async def test_a_statement_over_the_query_time_limit_is_cancelled_and_deadline_exceeded(service_env, database, owner):
    await store_events(database, [make_event() for _ in range(3)])
    async with serving_stub(service_env | {"AUDIT_QUERY_TIMEOUT_SECONDS": "0.5"}) as api:
        async with locked_log_of(database):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await api.ListEvents(pb.ListEventsRequest())
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "narrow the filter" in error.value.details() and "Traceback" not in error.value.details()

            async def released() -> bool:
                return await api_statements_waiting(owner, database) == 0

            await eventually(released, within=10, what="the timed-out statement cancelled in PostgreSQL")
        assert len((await api.ListEvents(pb.ListEventsRequest())).events) == 3, "the pool is usable afterwards"


async def test_a_client_deadline_cancels_the_statement_in_postgresql(api, database, owner):
    await store_events(database, [make_event() for _ in range(3)])
    async with locked_log_of(database):
        call = asyncio.ensure_future(api.ListEvents(pb.ListEventsRequest(), timeout=3))

        async def waiting() -> bool:
            return await api_statements_waiting(owner, database) == 1

        await eventually(waiting, within=10, what="the API's statement waiting on the lock")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        async def released() -> bool:
            return await api_statements_waiting(owner, database) == 0

        # Well before the service's own 30 s limit: the client's deadline cancelled the statement.
        await eventually(released, within=10, what="the abandoned statement cancelled in PostgreSQL")
    assert len((await api.ListEvents(pb.ListEventsRequest())).events) == 3


@contextlib.asynccontextmanager
async def locked_log_of(database) -> AsyncIterator[None]:
    """Holds an exclusive lock on the log (as a long migration or VACUUM FULL would), so reads wait on it."""
    holder = await asyncpg.connect(database.owner_url)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await holder.close()
