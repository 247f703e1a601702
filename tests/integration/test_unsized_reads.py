"""Reads bounded by bytes over a log holding events stored before audit_events.event_bytes existed (NULL there):
every read still pages through every event once, in order, whether its pages are cut by rows or by bytes, with
small events, events larger than a whole page's budget, and events stored after the migration mixed."""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.config import load_config
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate

from ..conftest import APP_ROLE, run_as_superuser, serving_api
from ..factories import content_of, make_event, stamp
from ..tail_helpers import Reader

RESPONSE_BYTES = 64 * 1024
"""AUDIT_MAX_RESPONSE_BYTES of the API under test: a ListEvents page reads at most this many bytes of events,
a ListResourceHistory page a third of it; the largest events below are larger than either alone."""


def events_of_mixed_sizes(count: int, seed: int) -> list:
    """Events of one resource, from a few hundred bytes to 90 KiB of incompressible state, in random order."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        event = make_event(message=f"event {seed}-{i}")
        event.resource.type, event.resource.id = "blob", "shared"
        size = rng.choice((0, 0, 0, 2_000, 30_000, 90_000))
        event.change.after.update({"i": i, "blob": base64.b64encode(rng.randbytes(size * 3 // 4)).decode()})
        events.append(stamp(event))
    return events


@pytest.fixture
async def unsized_log(postgres) -> AsyncIterator[tuple[str, list[str]]]:
    """A database whose first events were stored before migration 0006 sized them, then migrated to the latest
    schema, with more events stored since: (the service role's URL, every event id in position order).

    The old rows are made as migration 0005's appender left them: stored, then their event_bytes set to NULL by a
    superuser with the triggers off (the rows are otherwise identical: event_bytes is not part of the hash)."""
    name = f"u_{uuid.uuid4().hex[:12]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    owner = await asyncpg.connect(postgres.url(name))
    try:
        await migrate(owner, up_to=6)
        old = events_of_mixed_sizes(30, seed=1)
        appender = LogAppender()
        for start in range(0, len(old), 7):
            await appender.append(owner, [content_of(event) for event in old[start : start + 7]])
        async with owner.transaction():
            await owner.execute("SET LOCAL session_replication_role = replica")
            await owner.execute("UPDATE audit_events SET event_bytes = NULL")
        await migrate(owner)
        await owner.execute(f"GRANT audit_service TO {APP_ROLE}")
        new = events_of_mixed_sizes(12, seed=2)
        await LogAppender().append(owner, [content_of(event) for event in new])
        assert await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_bytes IS NULL") == len(old)
        yield postgres.url(name, user=APP_ROLE), [event.event_id for event in old + new]
    finally:
        await owner.close()
        await run_as_superuser(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def unsized_api(unsized_log, service_env) -> AsyncIterator[tuple[audit_service_pb2_grpc.AuditServiceStub, int]]:
    app_url, _ = unsized_log
    env = {**service_env, "AUDIT_DATABASE_URL": app_url, "AUDIT_MAX_RESPONSE_BYTES": str(RESPONSE_BYTES)}
    async with serving_api(load_config(env=env)) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield audit_service_pb2_grpc.AuditServiceStub(ch), server.port


@pytest.mark.parametrize("order", [pb.ORDER_NEWEST_FIRST, pb.ORDER_OLDEST_FIRST])
async def test_list_events_pages_through_every_unsized_event_once(unsized_log, unsized_api, order):
    _, ids = unsized_log
    stub, _ = unsized_api
    request = pb.ListEventsRequest(page_size=9, order=order)
    listed, cut_by_bytes = [], 0
    while True:
        page = await stub.ListEvents(request)
        listed += [event.event_id for event in page.events]
        if page.next_page_token and len(page.events) < request.page_size:
            cut_by_bytes += 1
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert listed == (ids[::-1] if order == pb.ORDER_NEWEST_FIRST else ids)
    assert cut_by_bytes, "no page was cut by bytes: the test does not exercise the byte budget"


@pytest.mark.parametrize("order", [pb.ORDER_NEWEST_FIRST, pb.ORDER_OLDEST_FIRST])
async def test_resource_history_pages_through_every_unsized_revision_once(unsized_log, unsized_api, order):
    _, ids = unsized_log
    stub, _ = unsized_api
    request = pb.ListResourceHistoryRequest(
        tenant="acme", resource_type="blob", resource_id="shared", page_size=9, order=order
    )
    revisions = []
    while True:
        page = await stub.ListResourceHistory(request)
        revisions += [revision.event.event_id for revision in page.revisions]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert revisions == (ids[::-1] if order == pb.ORDER_NEWEST_FIRST else ids)


async def test_tail_export_and_verification_read_every_unsized_event(unsized_log, unsized_api):
    _, ids = unsized_log
    stub, port = unsized_api
    tail = Reader.on_port(port, pb.TailEventsRequest(after_position=0))
    await tail.until(lambda reader: any(response.caught_up for response in reader.responses), what="caught up")
    await tail.close()
    assert tail.ids == ids

    request = pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON)
    exported = b"".join([chunk.data async for chunk in stub.ExportEvents(request)])
    assert len(exported.splitlines()) == len(ids)

    verified = await stub.VerifyChain(pb.VerifyChainRequest())
    assert (verified.ok, verified.events_checked) == (True, len(ids)), verified.first_break
