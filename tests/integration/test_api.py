"""The gRPC API over a real server on a free port: pages, tokens, lookups and error statuses."""

from __future__ import annotations

import asyncio
import collections

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.store.append import LogAppender
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import APP_ROLE, failure, serving_stub
from ..factories import content_of, make_event, stamp


@pytest.fixture
async def stored(database):
    """250 events of acme and 50 of globex, appended in batches as the worker does."""
    conn = await asyncpg.connect(database.app_url)
    appender = LogAppender()
    ids = []
    for batch in range(6):
        tenant = "globex" if batch == 5 else "acme"
        events = [stamp(make_event(tenant=tenant)) for _ in range(50)]
        await appender.append(conn, [content_of(event) for event in events])
        ids.extend(event.event_id for event in events)
    await conn.close()
    return ids


def request(tenant="acme", **fields) -> pb.ListEventsRequest:
    return pb.ListEventsRequest(filter=pb.EventFilter(tenant=tenant), **fields)


async def test_pages_walk_every_event_once_newest_first_by_default(api, stored):
    first = await api.ListEvents(request())
    assert len(first.events) == 100, "default page size"
    seen, token = [], ""
    while True:
        page = await api.ListEvents(request(page_size=70, page_token=token))
        seen.extend(event.position for event in page.events)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 250
    assert [event.position for event in first.events] == seen[:100]


async def test_new_events_never_shift_or_repeat_pages(api, stored, database):
    page = await api.ListEvents(request(page_size=100, order=pb.ORDER_OLDEST_FIRST))
    conn = await asyncpg.connect(database.app_url)
    await LogAppender().append(conn, [content_of(stamp(make_event())) for _ in range(10)])
    await conn.close()
    rest = []
    token = page.next_page_token
    while token:
        next_page = await api.ListEvents(request(page_size=100, order=pb.ORDER_OLDEST_FIRST, page_token=token))
        rest.extend(event.position for event in next_page.events)
        token = next_page.next_page_token
    positions = [event.position for event in page.events] + rest
    assert len(positions) == len(set(positions)) == 260
    assert positions == sorted(positions)


async def test_page_size_above_the_maximum_is_coerced(api, stored):
    page = await api.ListEvents(request(tenant="", page_size=5000))
    assert len(page.events) == 300 and page.next_page_token == ""


@pytest.mark.parametrize(
    ("bad_request", "field"),
    [
        (request(page_size=-1), "page_size"),
        (request(page_token="not-a-token"), "page_token"),
        (request(order=42), "order"),
        (request(tenant="x" * 200), "filter.tenant"),
    ],
)
async def test_malformed_arguments_are_invalid_argument_naming_the_field(api, stored, bad_request, field):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await api.ListEvents(bad_request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:")


async def test_a_page_token_is_bound_to_its_filter_and_order(api, stored):
    token = (await api.ListEvents(request(page_size=10))).next_page_token
    for other in (request(tenant="globex", page_token=token), request(page_token=token, order=pb.ORDER_OLDEST_FIRST)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.ListEvents(other)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "different filter, order or caller" in error.value.details()


async def test_get_event_returns_the_stored_event_or_not_found(api, stored):
    event = (await api.GetEvent(pb.GetEventRequest(event_id=stored[7]))).event
    assert event.event_id == stored[7] and event.position == 8
    assert event.recorded_at.seconds > 0 and len(event.hash) == 64
    assert event.metadata["scopes"] == ["read", "write"] and event.change.after["enabled"] is True

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await api.GetEvent(pb.GetEventRequest(event_id="01890a5d-ac96-774b-bcce-b302099a8057"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await api.GetEvent(pb.GetEventRequest(event_id="nope"))
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.details().startswith("event_id:")


async def test_count_events_is_exact(api, stored):
    assert (await api.CountEvents(pb.CountEventsRequest(filter=pb.EventFilter(tenant="acme")))).total == 250
    assert (await api.CountEvents(pb.CountEventsRequest())).total == 300


async def test_health_reports_serving(api):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "audit.v1.AuditService"):
            response = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_database_outage_is_unavailable_not_internal(api, stored, database_outage):
    async with database_outage():
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.ListEvents(request())
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Traceback" not in error.value.details()
    assert len((await api.ListEvents(request(page_size=1))).events) == 1, "recovers once the database is back"


async def test_sessions_ending_under_queries_answer_unavailable_never_internal(api, stored, sessions_ending):
    """Sessions that end under the API's pooled connections (a failover, a session killer) are UNAVAILABLE,
    which clients retry, whichever way asyncpg reports them (InternalClientError among them), never INTERNAL."""
    codes: collections.Counter[grpc.StatusCode] = collections.Counter()
    loop = asyncio.get_running_loop()
    async with sessions_ending() as ending:
        until = loop.time() + 3
        while loop.time() < until:
            for call in (api.ListEvents(request(page_size=5)), api.GetEvent(pb.GetEventRequest(event_id=stored[0]))):
                try:
                    await call
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code()] += 1
                    assert "Traceback" not in error.details()
    assert ending.ended > 20 and codes[grpc.StatusCode.UNAVAILABLE] > 0, (ending.ended, codes)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert len((await api.ListEvents(request(page_size=1))).events) == 1, "recovers once the sessions stay"


async def test_a_statement_the_database_cancels_for_its_time_limit_is_deadline_exceeded_not_internal(
    stored, database, owner, service_env
):
    """An operator's statement_timeout on the service's role: PostgreSQL cancels the statement (SQLSTATE 57014,
    QueryCanceledError), here one waiting behind the lock retention's DETACH PARTITION holds on the log. It is the
    service's own query time limit by another hand (the ingest worker treats both alike): DEADLINE_EXCEEDED, not
    INTERNAL with a traceback logged."""
    await owner.execute(f'ALTER ROLE {APP_ROLE} IN DATABASE "{database.name}" SET statement_timeout = 300')
    async with serving_stub(service_env) as api:
        async with owner.transaction():
            await owner.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
            code, details = await failure(api.ListEvents(request()))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
        assert len((await api.ListEvents(request(page_size=1))).events) == 1, "answers once the lock is gone"


async def test_absent_parts_of_an_event_stay_unset(api, database):
    event = stamp(make_event())
    event.ClearField("parent_resource")
    event.ClearField("request")
    conn = await asyncpg.connect(database.app_url)
    await LogAppender().append(conn, [content_of(event)])
    await conn.close()
    stored = (await api.GetEvent(pb.GetEventRequest(event_id=event.event_id))).event
    assert not stored.HasField("parent_resource") and not stored.HasField("request")
    assert stored.resource == event.resource and stored.actor == event.actor


async def test_health_watch_streams_the_status(api):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="audit.v1.AuditService")
        )
        first = await watch.read()
        watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
