"""ListEvents through the HTTP port (Connect, JSON and binary) next to the gRPC port, on the same log and the same
queries, and next to the same SQL answered by PostgreSQL directly.

What is measured, on real servers started in a temporary directory:

1. Data: N events (default 1M) loaded with query_latency.py's loader (20 tenants, 300 actors, 5,000 resources,
   106 actions over 90 days; rows sealed by the service's own code and COPYed, projections rebuilt, VACUUM
   ANALYZE; PostgreSQL with fsync off for loading, the embedded defaults otherwise).
2. The API runs as its own process (`python -m audit_service.cli serve`, JWT auth on, AUDIT_HTTP_ADDRESS set),
   so the gRPC port and the HTTP port serve the same servicer on the same pool. This process is the client.
3. Query kinds, from query_latency.py's request makers so the figures compare: tenant page 1 (100 events, newest
   first, no filter), + action, free-text search; plus a page no event matches (one indexed probe in
   PostgreSQL), which shows each door's fixed cost per call. Random tenants and parameters, the same calls for
   every door.
4. Doors, one call each in turn per query (the order rotating from one query to the next, so neither drift nor
   warm caches favour a door on two shared cores), after 50 warm-up calls:
   - gRPC: the generated stub (client/audit/v1) over one channel;
   - Connect JSON as curl calls it: POST application/json to /audit.v1.AuditService/ListEvents with a persistent
     httpx client, no compression (`Accept-Encoding: identity`), the answer parsed with json.loads;
   - Connect JSON as a browser calls it: the same with `Accept-Encoding: gzip, deflate, br, zstd` (the server
     then gzips every answer);
   - Connect binary: connectrpc's own AuditServiceClient (pyqwest) with its defaults (gzip both ways), and with
     compression off;
   - the machine's floor: the statement the service runs for the call (query_latency.direct_sql), run directly
     with asyncpg on one connection.
   Every door must return the same events for the same call (checked on every call, outside the timing).
5. Per door: p50/p95/p99 of the call's wall time, the ratio to gRPC, and the CPU the API process (from /proc,
   clock ticks around each call, so a mean over many calls) and this client spent per call. Per kind, the CPU
   seconds of each process (client, API, nats-server, PostgreSQL, everything else on the machine); a kind during
   which other processes took more than 10% of a core is flagged as possibly disturbed.
6. Where the HTTP port's time goes: the gRPC answers of each kind encoded again in this process, one page at a
   time, as protobuf binary, as the HTTP port's JSON (api/connect.CompactJsonCodec) and gzipped (connectrpc's
   GzipCompression, level 6); --profile adds a cProfile of the JSON encoding.

Figures are printed and written as JSON to bench/results/; nothing asserts on time.

Usage: .venv/bin/python bench/connect_latency.py [--events 1000000] [--calls 1000] [--profile]
       .venv/bin/python bench/connect_latency.py --events 100000 --calls 200     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit.v1.audit_service_connect import AuditServiceClient
from audit_service.api.connect import CompactJsonCodec
from audit_service.auth.tokens import mint_token
from audit_service.config import AuthConfig, NatsConfig
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE
from connectrpc.compression.gzip import GzipCompression
from google.protobuf import json_format
from ingest_throughput import Stack, _cpu_seconds, create_database, server_info
from query_latency import SECRET, WARMUP_CALLS, Call, Catalog, direct_sql, load, request_makers, summary
from tail_latency import Meter, cpu_delta, disturbance, format_cpu, start_api, stop_api

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LIST_EVENTS_PATH = "/audit.v1.AuditService/ListEvents"
KINDS = ("list: tenant page 1", "list: + action", "search: free text")
"""query_latency.py's kinds measured here (their names, so the figures line up)."""
EMPTY_PAGE = "list: no match (empty page)"
NO_SUCH_ACTION = "bench.no_such_action"
GRPC = "gRPC stub"
SQL = "PostgreSQL direct (asyncpg)"
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br, zstd"
ENCODING_SAMPLE_PAGES = 100
ENCODING_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Query:
    """One call of a query kind, in every form a door sends it (built before any timing)."""

    call: Call
    authorization: str
    json_body: bytes


@dataclass(frozen=True, slots=True)
class Door:
    """A way to ask the same query: `ask` returns the decoded answer; `positions` reads the page's events from it
    (None for the SQL floor, whose rows include the look-ahead row and ignore the response size limit)."""

    name: str
    ask: Callable[[Query], Awaitable[Any]]
    positions: Callable[[Any], list[int]] | None


@dataclass(slots=True)
class Samples:
    latencies: list[float] = field(default_factory=list)
    api_cpu: float = 0.0
    client_cpu: float = 0.0


def grpc_door(stub: audit_service_pb2_grpc.AuditServiceStub) -> Door:
    async def ask(query: Query) -> pb.ListEventsResponse:
        return await stub.ListEvents(query.call.request, metadata=(("authorization", query.authorization),))

    return Door(GRPC, ask, lambda page: [event.position for event in page.events])


def json_door(name: str, http: httpx.AsyncClient, accept_encoding: str) -> Door:
    async def ask(query: Query) -> Any:
        response = await http.post(
            LIST_EVENTS_PATH,
            content=query.json_body,
            headers={
                "content-type": "application/json",
                "accept-encoding": accept_encoding,
                "authorization": query.authorization,
            },
        )
        response.raise_for_status()
        return json.loads(response.content)

    return Door(name, ask, lambda page: [int(event["position"]) for event in page.get("events", ())])


def connect_proto_door(name: str, client: AuditServiceClient) -> Door:
    async def ask(query: Query) -> pb.ListEventsResponse:
        return await client.list_events(query.call.request, headers={"authorization": query.authorization})

    return Door(name, ask, lambda page: [event.position for event in page.events])


def sql_door(direct: asyncpg.Connection) -> Door:
    async def ask(query: Query) -> list[asyncpg.Record]:
        sql, sql_args = direct_sql(query.call)
        return await direct.fetch(sql, *sql_args)

    return Door(SQL, ask, None)


def queries_of(data: dict[str, Any], tokens: dict[str, str], count: int) -> dict[str, list[Query]]:
    """`count` calls of each kind, each with its tenant's admin token and its request as protobuf JSON."""
    cat: Catalog = data["catalog"]
    makers = {name: make for name, make in request_makers(data, {}, 0).items() if name in KINDS}
    makers[EMPTY_PAGE] = lambda rng: Call(
        "ListEvents", pb.ListEventsRequest(filter=pb.EventFilter(actions=[NO_SUCH_ACTION])), rng.choice(cat.tenants)
    )
    found = {}
    for name, make in makers.items():
        rng = random.Random(name)
        calls = [make(rng) for _ in range(count)]
        found[name] = [
            Query(call, f"Bearer {tokens[call.tenant]}", json_format.MessageToJson(call.request, indent=None).encode())
            for call in calls
        ]
    return found


async def measure_kind(
    queries: Sequence[Query], doors: Sequence[Door], api_pid: int
) -> tuple[dict[str, Samples], int, list[pb.ListEventsResponse]]:
    """Asks every query at every door in turn; returns the samples of the calls after the warm-up, the number of
    queries whose answers differed between doors, and the gRPC answers (for the encoding breakdown)."""
    samples = {door.name: Samples() for door in doors}
    mismatches = 0
    grpc_pages: list[pb.ListEventsResponse] = []
    for index, query in enumerate(queries):
        turn = index % len(doors)
        answers: dict[str, list[int]] = {}
        for door in (*doors[turn:], *doors[:turn]):
            api_before, client_before = _cpu_seconds(api_pid), time.process_time()
            started = time.perf_counter()
            answer = await door.ask(query)
            elapsed = time.perf_counter() - started
            client_cpu, api_cpu = time.process_time() - client_before, _cpu_seconds(api_pid) - api_before
            if index >= WARMUP_CALLS:
                sample = samples[door.name]
                sample.latencies.append(elapsed)
                sample.api_cpu += api_cpu
                sample.client_cpu += client_cpu
                if door.name == GRPC:
                    grpc_pages.append(answer)
            if door.positions is not None:
                answers[door.name] = door.positions(answer)
        if len({tuple(positions) for positions in answers.values()}) > 1:
            mismatches += 1
    return samples, mismatches, grpc_pages


def _mean_microseconds(pages: Sequence[Any], encode: Callable[[Any], Any]) -> float:
    """The fastest of ENCODING_REPEATS passes over `pages`, per page."""
    best = float("inf")
    for _ in range(ENCODING_REPEATS):
        started = time.perf_counter()
        for page in pages:
            encode(page)
        best = min(best, time.perf_counter() - started)
    return round(best / len(pages) * 1e6, 1)


def encoding_breakdown(pages: Sequence[pb.ListEventsResponse]) -> dict[str, float]:
    """What encoding one page costs in this process: protobuf binary, the HTTP port's JSON, gzip of each."""
    pages = pages[:ENCODING_SAMPLE_PAGES]
    codec, gzip = CompactJsonCodec(), GzipCompression()
    as_json = [codec.encode(page) for page in pages]
    as_proto = [page.SerializeToString() for page in pages]
    return {
        "events_per_page": round(sum(len(page.events) for page in pages) / len(pages), 1),
        "proto_bytes": round(sum(map(len, as_proto)) / len(pages)),
        "json_bytes": round(sum(map(len, as_json)) / len(pages)),
        "json_gzip_bytes": round(sum(len(gzip.compress(body)) for body in as_json) / len(pages)),
        "proto_encode_us": _mean_microseconds(pages, lambda page: page.SerializeToString()),
        "json_encode_us": _mean_microseconds(pages, codec.encode),
        "gzip_json_us": _mean_microseconds(as_json, gzip.compress),
        "gzip_proto_us": _mean_microseconds(as_proto, gzip.compress),
    }


def json_encoding_profile(pages: Sequence[pb.ListEventsResponse], top: int = 15) -> str:
    """cProfile of the HTTP port's JSON codec over `pages`: the functions that take the most time of their own."""
    codec = CompactJsonCodec()
    profile = cProfile.Profile()
    profile.enable()
    for page in pages[:ENCODING_SAMPLE_PAGES]:
        codec.encode(page)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def door_figures(samples: Samples, reference: Samples) -> dict[str, Any]:
    figures = summary(samples.latencies)
    grpc_figures = summary(reference.latencies)
    calls = len(samples.latencies)
    return figures | {
        "p50_vs_grpc": round(figures["p50_ms"] / grpc_figures["p50_ms"], 2),
        "p99_vs_grpc": round(figures["p99_ms"] / grpc_figures["p99_ms"], 2),
        "api_cpu_ms_per_call": round(samples.api_cpu / calls * 1000, 2),
        "client_cpu_ms_per_call": round(samples.client_cpu / calls * 1000, 2),
    }


async def measure(args: argparse.Namespace, stack: Stack, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    cat: Catalog = data["catalog"]
    auth = AuthConfig(jwt_secret=SECRET)
    tokens = {t: mint_token(auth, subject="bench-admin", tenant=t, admin=True, ttl_seconds=7200) for t in cat.tenants}
    app_url = stack.postgres.url("audit", user=APP_ROLE)
    http_port = free_port()
    nats_config = NatsConfig(subject_prefix="benchconnect", stream_prefix="BENCHCONNECT")
    api = await start_api(
        app_url, stack.nats.url, nats_config, stack.workdir / "api.log", jwt_secret=SECRET, http_port=http_port
    )
    meter = Meter(
        {"client (this process)": os.getpid(), "api (serve)": api.process.pid, "nats-server": stack.nats_pid},
        stack.postmaster_pid,
    )
    base_url = f"http://127.0.0.1:{http_port}"
    results: dict[str, Any] = {}
    profile = ""
    try:
        async with (
            grpc.aio.insecure_channel(api.target) as channel,
            httpx.AsyncClient(base_url=base_url, timeout=60) as http,
            AuditServiceClient(base_url, timeout_ms=60_000) as connect_gzip,
            AuditServiceClient(base_url, accept_compression=(), send_compression=None, timeout_ms=60_000) as connect,
        ):
            direct = await asyncpg.connect(app_url)
            try:
                doors = (
                    grpc_door(audit_service_pb2_grpc.AuditServiceStub(channel)),
                    json_door("Connect JSON (curl: identity)", http, "identity"),
                    json_door("Connect JSON (browser: gzip)", http, BROWSER_ACCEPT_ENCODING),
                    connect_proto_door("Connect proto (connectrpc)", connect),
                    connect_proto_door("Connect proto + gzip (defaults)", connect_gzip),
                    sql_door(direct),
                )
                for name, queries in queries_of(data, tokens, WARMUP_CALLS + args.calls).items():
                    before = meter.sample()
                    samples, mismatches, pages = await measure_kind(queries, doors, api.process.pid)
                    cpu = cpu_delta(before, meter.sample())
                    reference = samples[GRPC]
                    results[name] = {
                        "doors": {door: door_figures(s, reference) for door, s in samples.items()},
                        "mismatched_answers": mismatches,
                        "encoding": encoding_breakdown(pages),
                        "cpu_seconds": cpu,
                        "disturbed": disturbance(cpu),
                    }
                    print("\n".join(kind_lines(name, results[name])), flush=True)
                    if args.profile and name == KINDS[0]:
                        profile = json_encoding_profile(pages)
            finally:
                await direct.close()
    finally:
        await asyncio.to_thread(stop_api, api)
    return results, profile


def kind_lines(name: str, figures: dict[str, Any]) -> list[str]:
    encoding = figures["encoding"]
    check = "answers identical" if not figures["mismatched_answers"] else f"{figures['mismatched_answers']} MISMATCHED"
    lines = [
        f"{name} ({encoding['events_per_page']:g} events/page; proto {encoding['proto_bytes'] / 1024:,.1f} KiB, "
        f"JSON {encoding['json_bytes'] / 1024:,.1f} KiB, gzipped {encoding['json_gzip_bytes'] / 1024:,.1f} KiB; "
        f"{check})",
        f"  {'door':<34}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'p50/gRPC':>10}{'p99/gRPC':>10}"
        f"{'API CPU ms':>12}{'client CPU ms':>15}",
    ]
    for door, f in figures["doors"].items():
        lines.append(
            f"  {door:<34}{f['p50_ms']:>8.2f}{f['p95_ms']:>8.2f}{f['p99_ms']:>8.2f}{f['p50_vs_grpc']:>10.2f}"
            f"{f['p99_vs_grpc']:>10.2f}{f['api_cpu_ms_per_call']:>12.2f}{f['client_cpu_ms_per_call']:>15.2f}"
        )
    lines.append(f"  CPU seconds: {format_cpu(figures['cpu_seconds'])}")
    if figures["disturbed"]:
        lines.append(f"  ! {figures['disturbed']}")
    lines.append(
        f"  encoding one page here: proto {encoding['proto_encode_us']:,.0f} us, JSON {encoding['json_encode_us']:,.0f}"
        f" us; gzip of the JSON {encoding['gzip_json_us']:,.0f} us, of the proto {encoding['gzip_proto_us']:,.0f} us"
    )
    return lines


async def benchmark(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    servers = await server_info(stack.postgres)
    owner_url = await create_database(stack.postgres, "audit", app_role=True)
    print(f"loading {args.events:,} events ...", flush=True)
    started = time.perf_counter()
    data = await load(owner_url, args.events, seed=args.seed)
    print(f"loaded in {time.perf_counter() - started:.0f} s; log + indexes: {data['size']}", flush=True)
    results, profile = await measure(args, stack, data)
    return {
        "benchmark": "connect_latency",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "servers": servers,
        "events": args.events,
        "calls_per_kind": args.calls,
        "log_size": data["size"],
        "results": results,
        "json_encoding_profile": profile,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1000000)")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per query kind and door (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the JSON encoding of page 1")
    args = parser.parse_args(argv)
    if args.events < 1 or args.calls < 1:
        parser.error("--events and --calls must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"audit-connect-bench-{uuid.uuid4().hex[:6]}-"))
    stack = Stack(
        workdir,
        EmbeddedPostgres(workdir / "pg", port=free_port(), durable=False),
        NatsServer(workdir / "nats", port=free_port()),
    )
    try:
        stack.start()
        summary_ = asyncio.run(benchmark(args, stack))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    servers = summary_["servers"]
    print("=" * 110)
    print(
        f"connect_latency: ListEvents over {summary_['events']:,} events ({summary_['log_size']}), "
        f"{args.calls} calls per kind and door, PostgreSQL {servers['postgres_server_version']} "
        f"shared_buffers={servers['postgres_shared_buffers']}, {os.cpu_count()} cores shared by client, API and "
        "PostgreSQL"
    )
    for name, figures in summary_["results"].items():
        print("\n".join(kind_lines(name, figures)))
    if summary_["json_encoding_profile"]:
        print(f"cProfile of the HTTP port's JSON codec over {KINDS[0]} pages:\n{summary_['json_encoding_profile']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"connect_latency-{summary_['events']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary_, indent=2) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
