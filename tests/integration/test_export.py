"""ExportEvents through a real gRPC server: CSV, NDJSON and log lines hold exactly what ListEvents lists for
the same filter, NDJSON verifies offline, chunks respect the response limit, an export resumes from a chunk's
last_position, access control is ListEvents', and 1M events stream in flat memory (slow)."""

from __future__ import annotations

import asyncio
import collections
import csv
import datetime as dt
import io
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.config import load_config
from audit_service.core.ndjson import sealed_from_line
from audit_service.core.records import CONTENT_COLUMNS, GENESIS_HASH, STORED_COLUMNS, chain_hash, seal_canonical
from google.protobuf import json_format

from ..conftest import bearer, serving_api, serving_stub, store_events
from ..factories import content_of, make_event, stamp

CSV_HEADER = [
    "time",
    "action",
    "outcome",
    "actor",
    "actor_type",
    "resource_type",
    "resource_name",
    "resource_id",
    "route",
    "ip_address",
    "user_agent",
    "message",
    "trace_id",
]
TEXTS = ["plain", "comma, here", 'say "hi"', "two\nlines\r\nthree", "ünïcödé ✓ 🎉", "tab\tand=equals", "back\\slash"]
_VALUE = r'(?:"(?:[^"\\\n]|\\.)*"|[^\s"=\\]+)'
LOG_LINE = re.compile(
    rf"time=\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}Z level=(?:info|warn) msg={_VALUE} tenant={_VALUE} "
    rf"action={_VALUE} outcome=(?:SUCCESS|FAILURE|DENIED)"
    rf"(?: actor={_VALUE})?(?: actorType=[A-Z_]+)?(?: resourceType={_VALUE})?(?: resourceId={_VALUE})?"
    rf"(?: resourceName={_VALUE})?(?: route={_VALUE})?(?: method={_VALUE})?(?: ip={_VALUE})?(?: userAgent={_VALUE})?"
    r" event_id=[0-9a-f-]{36} position=\d+(?: trace_id=[0-9a-f]{32} span_id=[0-9a-f]{16})?\n"
)


def varied_events(tenant: str, count: int) -> list[event_pb2.AuditEvent]:
    """Events with awkward texts, every outcome, some without a request or a trace."""
    events = []
    for i in range(count):
        text = TEXTS[i % len(TEXTS)]
        event = make_event(
            tenant,
            action=("api_key.create", "api_key.rotate", "Login")[i % 3],
            outcome=(event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED)[i % 3],
            message=f"{text} #{i}",
        )
        event.request.user_agent = text
        if i % 4 == 0:
            event.ClearField("request")
        if i % 5 == 0:
            event.trace_id, event.span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        if i % 6 == 0:
            event.actor.slug = ""
        events.append(event)
    return events


async def export(stub, request: pb.ExportEventsRequest, metadata=None) -> tuple[bytes, list[pb.ExportEventsResponse]]:
    chunks = [chunk async for chunk in stub.ExportEvents(request, metadata=metadata)]
    return b"".join(chunk.data for chunk in chunks), chunks


async def listed(stub, request_filter: pb.EventFilter, metadata=None, page_size: int = 7) -> list[event_pb2.AuditEvent]:
    """Every event ListEvents lists for the filter, oldest first."""
    events, token = [], ""
    while True:
        page = await stub.ListEvents(
            pb.ListEventsRequest(
                filter=request_filter, page_size=page_size, page_token=token, order=pb.ORDER_OLDEST_FIRST
            ),
            metadata=metadata,
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def csv_row_of(event: event_pb2.AuditEvent) -> list[str]:
    """The CSV row an event should export as, from its ListEvents form."""
    actor = event.actor
    return [
        event.occurred_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        event.action,
        event_pb2.Outcome.Name(event.outcome).removeprefix("OUTCOME_"),
        actor.slug or actor.email or actor.id or actor.display_name,
        event_pb2.SubjectType.Name(actor.type).removeprefix("SUBJECT_TYPE_") if actor.type else "",
        event.resource.type,
        event.resource.name,
        event.resource.id,
        event.request.route,
        event.request.ip_address,
        event.request.user_agent,
        event.message,
        event.trace_id,
    ]


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def assert_counters(chunks: list[pb.ExportEventsResponse], positions: list[int], after: int, through: int) -> None:
    assert sum(chunk.events for chunk in chunks) == len(positions)
    assert all(chunk.through_position == through for chunk in chunks)
    lasts = [chunk.last_position for chunk in chunks]
    assert lasts == sorted(lasts) and lasts[-1] == (positions[-1] if positions else after)


async def log_head(database) -> int:
    conn = await asyncpg.connect(database.app_url)
    try:
        return await conn.fetchval("SELECT last_position FROM audit_log_head")
    finally:
        await conn.close()


async def test_csv_has_a_header_and_the_rows_list_events_lists_for_the_filter(api, database) -> None:
    await store_events(database, varied_events("acme", 40) + varied_events("globex", 10))
    request_filter = pb.EventFilter(tenant="acme", actions=["api_key.*"])
    data, chunks = await export(api, pb.ExportEventsRequest(filter=request_filter, format=pb.EXPORT_FORMAT_CSV))
    expected = await listed(api, request_filter)

    rows = read_csv(data)
    assert rows[0] == CSV_HEADER
    assert rows[1:] == [csv_row_of(event) for event in expected]
    assert len(expected) == 27 and {row[1] for row in rows[1:]} == {"api_key.create", "api_key.rotate"}
    assert_counters(chunks, [event.position for event in expected], 0, await log_head(database))


async def test_ndjson_lines_are_the_listed_events_and_verify_offline_per_tenant_chain(api, database) -> None:
    await store_events(
        database, [e for pair in zip(varied_events("acme", 20), varied_events("globex", 20), strict=True) for e in pair]
    )
    data, chunks = await export(api, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON))
    lines = data.splitlines(keepends=True)
    expected = await listed(api, pb.EventFilter())

    assert len(lines) == 40 and all(line.endswith(b"\n") for line in lines)
    assert [json_format.ParseDict(orjson.loads(line), event_pb2.AuditEvent()) for line in lines] == expected
    heads: dict[str, bytes] = {}
    for line in lines:
        sealed = sealed_from_line(line)
        assert chain_hash(sealed.prev_hash, sealed.canonical) == sealed.hash
        assert sealed.prev_hash == heads.get(sealed.tenant, GENESIS_HASH), "linked to the tenant's previous event"
        heads[sealed.tenant] = sealed.hash
    assert set(heads) == {"acme", "globex"}
    assert_counters(chunks, [event.position for event in expected], 0, 40)


async def test_the_ndjson_export_file_verifies_with_verify_file_and_a_changed_line_does_not(
    api, database, tmp_path
) -> None:
    """What an auditor does with an export: `audit-service verify-file`, no database, names the altered event."""
    await store_events(database, varied_events("acme", 15) + varied_events("globex", 15))
    data, _ = await export(api, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON))
    exported = tmp_path / "export.ndjson"
    exported.write_bytes(data)
    lines = data.splitlines(keepends=True)
    altered_event = orjson.loads(lines[17])
    altered_event["message"] = "nothing to see here"
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(b"".join([*lines[:17], orjson.dumps(altered_event) + b"\n", *lines[18:]]))

    verified = await verify_file_cli(exported)
    refused = await verify_file_cli(tampered)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"ok: {exported}: 30 events")
    assert refused.returncode == 1
    assert f"position {altered_event['position']} (line 18)" in refused.stdout, refused.stdout


async def verify_file_cli(path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "verify-file", str(path)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_log_lines_match_the_documented_format(api, database) -> None:
    await store_events(database, varied_events("acme", 30))
    data, _ = await export(api, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_LOG_LINES))
    lines = data.decode().splitlines(keepends=True)
    expected = await listed(api, pb.EventFilter())

    assert len(lines) == len(expected) == 30
    for line, event in zip(lines, expected, strict=True):
        assert LOG_LINE.fullmatch(line), line
        assert f" event_id={event.event_id} position={event.position}" in line
        level = "info" if event.outcome == event_pb2.OUTCOME_SUCCESS else "warn"
        assert line.startswith(
            f"time={event.occurred_at.ToDatetime().strftime('%Y-%m-%dT%H:%M:%S.%fZ')} level={level} "
        )


async def test_an_export_resumes_after_a_chunks_last_position(service_env, database) -> None:
    await store_events(database, varied_events("acme", 1000))
    # The smallest response limit, so the export comes in many chunks.
    async with serving_stub(service_env | {"AUDIT_MAX_RESPONSE_BYTES": "16384"}) as stub:
        full, chunks = await export(stub, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV))
        assert len(chunks) > 3
        assert all(len(chunk.SerializeToString()) <= 16384 for chunk in chunks)
        cut = chunks[len(chunks) // 2]
        resumed, resumed_chunks = await export(
            stub, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV, after_position=cut.last_position)
        )
    head = b"".join(chunk.data for chunk in chunks[: len(chunks) // 2 + 1])
    assert head + resumed == full, "the resumed export continues exactly where the chunk ended, without a header"
    assert read_csv(resumed)[0] != CSV_HEADER
    positions = list(range(cut.last_position + 1, 1001))
    assert_counters(resumed_chunks, positions, cut.last_position, 1000)


async def test_a_line_larger_than_the_response_limit_is_cut_over_chunks_that_concatenate(service_env, database) -> None:
    big = make_event("acme", message="ü" * 16_000)  # about 32 KB of UTF-8 in every format
    await store_events(database, [make_event("acme"), big, make_event("acme")])
    async with serving_stub(service_env | {"AUDIT_MAX_RESPONSE_BYTES": "16384"}) as stub:
        for export_format in (pb.EXPORT_FORMAT_CSV, pb.EXPORT_FORMAT_NDJSON, pb.EXPORT_FORMAT_LOG_LINES):
            data, chunks = await export(stub, pb.ExportEventsRequest(format=export_format))
            assert all(len(chunk.SerializeToString()) <= 16384 for chunk in chunks)
            assert [chunk.events for chunk in chunks if chunk.events == 0], "the big line came in pieces"
            for chunk in chunks:
                chunk.data.decode()  # cut between UTF-8 characters, never inside one
            assert_counters(chunks, [1, 2, 3], 0, 3)
            assert "ü" * 16_000 in data.decode().replace("\r\n", "\n")


async def test_the_export_holds_nothing_committed_after_it_started(service_env, database) -> None:
    await store_events(database, varied_events("acme", 2500))
    # Three pages of reads; with flow control's window kept small (no BDP probing), the third starts only after
    # the client has read about 1 MB, well after the events below are committed.
    config = load_config(env=service_env | {"AUDIT_MAX_RESPONSE_BYTES": "16384"})
    async with (
        serving_api(config) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]) as channel,
    ):
        call = audit_service_pb2_grpc.AuditServiceStub(channel).ExportEvents(
            pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON)
        )
        first = await call.read()
        assert first.through_position == 2500
        await store_events(database, varied_events("acme", 50))
        rest = []
        while (chunk := await call.read()) is not grpc.aio.EOF:
            rest.append(chunk)
    lines = b"".join(chunk.data for chunk in [first, *rest]).splitlines()
    assert [sealed_from_line(line).position for line in lines] == list(range(1, 2501))


async def test_an_empty_export_sends_one_chunk_with_the_head(api, database) -> None:
    await store_events(database, varied_events("acme", 3))
    data, chunks = await export(api, pb.ExportEventsRequest(filter=pb.EventFilter(tenant="nobody"), format=2))
    assert data == b"" and len(chunks) == 1
    assert (chunks[0].events, chunks[0].last_position, chunks[0].through_position) == (0, 0, 3)
    data, chunks = await export(api, pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV, after_position=3))
    assert data == b"" and (chunks[0].last_position, chunks[0].through_position) == (3, 3)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ExportEventsRequest(), "format"),
        (pb.ExportEventsRequest(format=99), "format"),
        (pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_CSV, after_position=-1), "after_position"),
    ],
)
async def test_a_bad_request_is_invalid_argument_naming_the_field(api, request_, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await export(api, request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}:")


async def test_access_control_is_that_of_list_events(secured, database) -> None:
    alice = event_pb2.Subject(id="u-alice", slug="alice", type=event_pb2.SUBJECT_TYPE_USER)
    bob = event_pb2.Subject(id="u-bob", slug="bob", type=event_pb2.SUBJECT_TYPE_USER)
    await store_events(
        database,
        [make_event("acme", actor=alice) for _ in range(3)]
        + [make_event("acme", actor=bob) for _ in range(2)]
        + [make_event("globex", actor=alice) for _ in range(4)],
    )
    ndjson = pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON)

    def actors(data: bytes) -> list[tuple[str, str]]:
        return [(e["tenant"], e["actor"]["id"]) for e in map(orjson.loads, data.splitlines())]

    admin = bearer(secured.token("acme", "u-admin", admin=True))
    assert actors((await export(secured.stub, ndjson, admin))[0]) == [("acme", "u-alice")] * 3 + [("acme", "u-bob")] * 2
    own = bearer(secured.token("acme", "u-bob"))
    assert actors((await export(secured.stub, ndjson, own))[0]) == [("acme", "u-bob")] * 2
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await export(secured.stub, pb.ExportEventsRequest(filter=pb.EventFilter(tenant="globex"), format=1), admin)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await export(secured.stub, ndjson)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- 1M events in flat memory --------------------------------------------------------------------------------

MILLION = 1_000_000
SEED_BATCH = 20_000


def sealed_rows(count: int) -> Iterator[tuple[tuple[Any, ...], tuple[str, int, dt.datetime]]]:
    """(row, (event_id, position, recorded_at)) of `count` events of two tenants, sealed by the service's code,
    from one template content varied cheaply."""
    template = list(content_of(stamp(make_event("acme"))))
    column = {name: i for i, name in enumerate(CONTENT_COLUMNS)}
    template[column["user_agent"]] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120"
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    occurred_micros = template[column["occurred_at"]]
    heads = {"acme": GENESIS_HASH, "globex": GENESIS_HASH}
    for position in range(1, count + 1):
        values = list(template)
        event_id = f"00000000-0000-4000-8000-{position:012x}"
        tenant = "globex" if position % 10 == 0 else "acme"
        values[column["event_id"]] = event_id
        values[column["tenant"]] = tenant
        values[column["resource_id"]] = f"key-{position}"
        values[column["resource_name"]] = f"ci-key-{position}"
        values[column["message"]] = f'rotated API key "ci-key-{position}", scopes read, write (#{position})'
        values[column["occurred_at"]] = occurred_micros + position
        recorded_at = start + dt.timedelta(microseconds=position)
        canonical, heads[tenant], row = seal_canonical(position, recorded_at, tuple(values), heads[tenant])
        yield (*row, len(canonical)), (event_id, position, recorded_at)


async def seed(owner_url: str, count: int) -> None:
    """COPYs `count` sealed events into the log (as bench/query_latency.py loads), then sets the head."""
    conn = await asyncpg.connect(owner_url)
    try:
        now = dt.datetime.now(dt.UTC)
        for month in {now.replace(day=1), (now - dt.timedelta(hours=2)).replace(day=1)}:
            await conn.execute("SELECT audit_ensure_partition($1)", month)
        rows, ids = [], []
        for row, ids_row in sealed_rows(count):
            rows.append(row)
            ids.append(ids_row)
            if len(rows) == SEED_BATCH:
                await conn.copy_records_to_table("audit_events", records=rows, columns=STORED_COLUMNS)
                await conn.copy_records_to_table(
                    "audit_event_ids", records=ids, columns=("event_id", "position", "recorded_at")
                )
                rows, ids = [], []
        assert not rows
        await conn.execute("UPDATE audit_log_head SET last_position = $1, last_recorded_at = now()", count)
        await conn.execute("VACUUM (ANALYZE) audit_events")
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_csv_export_of_1m_events_streams_in_flat_memory_and_equals_list_events(api_process, database) -> None:
    started = time.monotonic()
    await seed(database.owner_url, MILLION)
    seeded = time.monotonic()
    api = api_process()
    await api.start().ready()
    port = int(api.env["AUDIT_GRPC_ADDRESS"].rsplit(":", 1)[1])
    request_filter = pb.EventFilter()  # every tenant (authentication is off): the 1M events
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        await stub.ListEvents(pb.ListEventsRequest(page_size=1000))  # warm: imports, pool, plans
        rss_before = rss_peak = api.rss_bytes()

        async def sample_rss() -> None:
            nonlocal rss_peak
            while True:
                rss_peak = max(rss_peak, api.rss_bytes())
                await asyncio.sleep(0.1)

        sampling = asyncio.create_task(sample_rss())
        expected: collections.deque[list[str]] = collections.deque()
        token, listed_all = "", False

        async def next_expected() -> list[str]:
            nonlocal token, listed_all
            if not expected and not listed_all:
                page = await stub.ListEvents(
                    pb.ListEventsRequest(
                        filter=request_filter, page_size=1000, page_token=token, order=pb.ORDER_OLDEST_FIRST
                    )
                )
                expected.extend(csv_row_of(event) for event in page.events)
                token = page.next_page_token
                listed_all = not token
            return expected.popleft()

        rows = exported_bytes = chunk_count = chunk_events = 0
        header: list[str] | None = None
        try:
            async for chunk in stub.ExportEvents(pb.ExportEventsRequest(filter=request_filter, format=1)):
                chunk_count += 1
                chunk_events += chunk.events
                exported_bytes += len(chunk.data)
                # Every chunk ends at the end of a line (no line here is larger than a chunk).
                for fields in csv.reader(io.StringIO(chunk.data.decode(), newline="")):
                    if header is None:
                        header = fields
                        continue
                    assert fields == await next_expected(), f"row {rows + 1}"
                    rows += 1
        finally:
            sampling.cancel()
        assert not expected and listed_all
    finished = time.monotonic()
    print(
        f"\nCSV export of {rows:,} events ({exported_bytes / 2**20:,.0f} MiB in {chunk_count:,} chunks), compared "
        f"row by row with ListEvents: API RSS {rss_before / 2**20:.0f} MiB before, {rss_peak / 2**20:.0f} MiB at "
        f"most (+{(rss_peak - rss_before) / 2**20:.0f} MiB); seeding {seeded - started:.0f} s, export and "
        f"comparison {finished - seeded:.0f} s"
    )
    assert header == CSV_HEADER
    assert rows == chunk_events == MILLION
    assert exported_bytes > 200 * 2**20
    assert rss_peak - rss_before < 100 * 2**20


async def test_pages_of_large_events_hold_few_of_them_so_memory_stays_bounded(api_process, database) -> None:
    """600 events of ~150 KB (90 MB): read 1,000 to a page, one page alone would hold them all; read by size, the
    API holds a few MiB of them at a time."""
    events = []
    for i in range(600):
        event = make_event("acme", message=f"large event {i}")
        event.metadata.update({f"field_{k}": f"{i:04d}-{k:03d}-" + "x" * 1000 for k in range(150)})
        events.append(event)
    await store_events(database, events)
    api = api_process()
    await api.start().ready()
    port = int(api.env["AUDIT_GRPC_ADDRESS"].rsplit(":", 1)[1])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]) as ch:
        stub = audit_service_pb2_grpc.AuditServiceStub(ch)
        await stub.ListEvents(pb.ListEventsRequest(page_size=1))  # warm: imports, pool, plans
        rss_before = rss_peak = api.rss_bytes()
        exported = lines = 0
        async for chunk in stub.ExportEvents(pb.ExportEventsRequest(format=pb.EXPORT_FORMAT_NDJSON)):
            exported += len(chunk.data)
            lines += chunk.data.count(b"\n")
            rss_peak = max(rss_peak, api.rss_bytes())
            await asyncio.sleep(0.002)  # a reader slower than the server: it waits on flow control
    print(f"exported {exported / 2**20:.0f} MiB; API RSS {rss_before / 2**20:.0f} -> peak {rss_peak / 2**20:.0f} MiB")
    assert lines == 600 and exported > 80 * 2**20
    assert rss_peak - rss_before < 40 * 2**20
