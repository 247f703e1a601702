"""Query latency of the audit log API on a large log, next to the same SQL run directly.

What is measured, on a real embedded PostgreSQL started in a temporary directory:

1. A log of N events (default 1M) of realistic shape is loaded: 20 tenants, 300 actors, 5,000 resources,
   106 actions, recorded over 90 days. Rows are built by the service's own code (canonical content, hash
   chains) and COPYed into the migrated schema with all its indexes; the count projection is then built by
   the service's `rebuild_projections`, and the table is vacuumed and analyzed (as autovacuum would).
   Loading is not timed against anything (PostgreSQL runs with fsync off for it).
2. The API runs as its own process (`python -m audit_service.cli serve`, JWT auth on). This process is the
   client: for each query kind it makes --calls sequential calls (after a warm-up) with admin tokens of
   random tenants and random parameters, and records each call's latency.
3. The same statements the service runs (built by the service's own query code for the same filters) are
   run directly with asyncpg, so the service's overhead (gRPC, auth, encoding) is visible.

Query kinds: tenant page 1; + action; + actor; + resource; + 24 h time range; page 500 via page tokens;
free-text search; CountEvents over 30 days, hourly, grouped by action. Figures are p50/p95/p99 in ms.

Usage: .venv/bin/python bench/query_latency.py [--events 1000000] [--calls 1000] [--kinds list,count]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.auth.tokens import mint_token
from audit_service.config import ApiConfig, AuthConfig
from audit_service.core.counts import CountSource
from audit_service.core.event_filter import Scope, compile_filter
from audit_service.core.records import CONTENT_COLUMNS, GENESIS_HASH, STORED_COLUMNS, seal_canonical
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE, grant_app_role
from audit_service.store import queries
from audit_service.store.migrate import migrate
from audit_service.store.projections import rebuild_projections
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECRET = "bench-secret-" + "x" * 40
CHUNK = 20_000
DAYS = 90
WARMUP_CALLS = 50
DEFAULT_PAGE_DEPTH = 500
DEEP_PAGE_TENANTS = 4

# --- a realistic log ---------------------------------------------------------------------------------------

_RESOURCE_TYPES = (
    "api_key", "cluster", "workspace", "secret", "model", "deployment", "service_account", "team", "role_binding",
    "webhook", "dataset", "pipeline", "notebook", "volume", "policy", "integration", "repository", "environment",
    "alert", "token",
)  # fmt: skip
_VERBS = ("create", "update", "delete", "read", "rotate")
_AUTH_ACTIONS = ("Login", "Logout", "LoginFailed", "MfaEnrolled", "PasswordReset", "SessionRevoked")
_OUTCOMES = (event_pb2.OUTCOME_SUCCESS,) * 17 + (event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED)
_ACTOR_TYPES = (event_pb2.SUBJECT_TYPE_USER,) * 6 + (
    event_pb2.SUBJECT_TYPE_SERVICE_ACCOUNT,
    event_pb2.SUBJECT_TYPE_VIRTUAL_ACCOUNT,
    event_pb2.SUBJECT_TYPE_SYSTEM,
)
_METHODS = {"create": "POST", "update": "PATCH", "delete": "DELETE", "read": "GET", "rotate": "POST"}


@dataclass(frozen=True, slots=True)
class Catalog:
    tenants: list[str]
    actors: list[tuple[str, int, str, str, str]]
    """(id, type, slug, display name, email)"""
    resources: list[tuple[str, str, str, str]]
    """(type, id, name, fqn)"""
    actions: list[str]


def catalog(rng: random.Random) -> Catalog:
    actors = []
    for i in range(300):
        slug = f"user-{i:03d}"
        actors.append((f"usr_{i:04d}", rng.choice(_ACTOR_TYPES), slug, f"User {i:03d}", f"{slug}@example.com"))
    resources = []
    for i in range(5000):
        kind = _RESOURCE_TYPES[i % len(_RESOURCE_TYPES)]
        name = f"{kind.replace('_', '-')}-{i:04d}"
        resources.append((kind, f"{kind[:3]}_{i:05d}", name, f"prod/ws-{i % 37:02d}/{name}"))
    actions = [f"{kind}.{verb}" for kind in _RESOURCE_TYPES for verb in _VERBS] + list(_AUTH_ACTIONS)
    return Catalog([f"tenant-{i:02d}" for i in range(20)], actors, resources, actions)


def contents(count: int, start: dt.datetime, rng: random.Random, cat: Catalog) -> Iterator[tuple[dt.datetime, tuple]]:
    """(recorded_at, canonical content) of `count` events spread evenly over DAYS from `start`."""
    step = dt.timedelta(days=DAYS) / count
    column = {name: i for i, name in enumerate(CONTENT_COLUMNS)}
    template: list[Any] = [
        None if name in ("metadata", "change_before", "change_after") else "" for name in CONTENT_COLUMNS
    ]
    for i in range(count):
        recorded_at = start + step * i
        actor_id, actor_type, slug, display, email = rng.choice(cat.actors)
        kind, resource_id, name, fqn = rng.choice(cat.resources)
        action = rng.choice(cat.actions)
        verb = action.rsplit(".", 1)[-1]
        values = list(template)
        values[column["event_id"]] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        values[column["tenant"]] = rng.choice(cat.tenants)
        values[column["action"]] = action
        values[column["outcome"]] = rng.choice(_OUTCOMES)
        values[column["actor_id"]] = actor_id
        values[column["actor_type"]] = actor_type
        values[column["actor_slug"]] = slug
        values[column["actor_display_name"]] = display
        values[column["actor_email"]] = email
        if not action[0].isupper():
            values[column["resource_type"]] = kind
            values[column["resource_id"]] = resource_id
            values[column["resource_name"]] = name
            values[column["resource_fqn"]] = fqn
        values[column["request_route"]] = f"/api/v1/{kind}s/{{id}}"
        values[column["request_method"]] = _METHODS.get(verb, "POST")
        values[column["ip_address"]] = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        values[column["user_agent"]] = "platform-cli/1.18.4 (linux; amd64)"
        values[column["cluster_id"]] = "prod-cluster"
        values[column["workspace_id"]] = f"ws-{rng.randrange(37):02d}"
        values[column["message"]] = f"{display} ran {verb} on {kind} {name}"
        values[column["metadata"]] = {"source": "api", "attempt": float(rng.randint(1, 3))}
        occurred = recorded_at - dt.timedelta(microseconds=rng.randrange(2_000_000))
        values[column["occurred_at"]] = (occurred - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
            microseconds=1
        )
        yield recorded_at, tuple(values)


async def load(owner_url: str, count: int, seed: int) -> dict[str, Any]:
    """Loads `count` events ending now; returns facts about the data."""
    rng = random.Random(seed)
    cat = catalog(rng)
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS)).replace(microsecond=0)
    conn = await asyncpg.connect(owner_url)
    try:
        month = start.replace(day=1, hour=0, minute=0, second=0)
        while month <= dt.datetime.now(dt.UTC) + dt.timedelta(days=32):
            await conn.execute("SELECT audit_ensure_partition($1)", month)
            month = (month + dt.timedelta(days=32)).replace(day=1)
        heads: dict[str, tuple[int, bytes]] = {}
        rows, ids = [], []
        started = time.perf_counter()
        last_recorded_at = start
        for position, (recorded_at, content) in enumerate(contents(count, start, rng, cat), start=1):
            tenant = content[1]
            canonical, digest, row = seal_canonical(
                position, recorded_at, content, heads.get(tenant, (0, GENESIS_HASH))[1]
            )
            heads[tenant] = (position, digest)
            rows.append((*row, len(canonical)))
            ids.append((content[0], position, recorded_at))
            last_recorded_at = recorded_at
            if len(rows) == CHUNK or position == count:
                async with conn.transaction():
                    await conn.copy_records_to_table("audit_events", records=rows, columns=STORED_COLUMNS)
                    await conn.copy_records_to_table(
                        "audit_event_ids", records=ids, columns=("event_id", "position", "recorded_at")
                    )
                rows, ids = [], []
                if position % (CHUNK * 25) == 0 or position == count:
                    rate = position / (time.perf_counter() - started)
                    print(f"  loaded {position:,} events ({rate:,.0f}/s)", flush=True)
        await conn.execute(
            "UPDATE audit_log_head SET last_position = $1, last_recorded_at = $2", count, last_recorded_at
        )
        await conn.executemany(
            "INSERT INTO audit_chain_heads (tenant, last_position, last_hash) VALUES ($1, $2, $3)",
            [(tenant, position, digest) for tenant, (position, digest) in heads.items()],
        )
        report = await rebuild_projections(conn)
        print(
            f"  count projections: {report.rows:,} rows (per action: {report.action_rows:,}) "
            f"for {report.events:,} events",
            flush=True,
        )
        print("  VACUUM ANALYZE ...", flush=True)
        await conn.execute("VACUUM (ANALYZE) audit_events")
        await conn.execute("VACUUM (ANALYZE) audit_counts_hourly")
        await conn.execute("VACUUM (ANALYZE) audit_action_counts_hourly")
        size = await conn.fetchval("SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits")
    finally:
        await conn.close()
    return {"catalog": cat, "start": start, "end": last_recorded_at, "size": size}


# --- the calls --------------------------------------------------------------------------------------------


@dataclass
class Call:
    rpc: str
    request: Any
    tenant: str
    after_position: int | None = None
    """For a page reached by a token: the position the token stands for."""


def hour_floor(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def request_makers(
    data: dict[str, Any], page_tokens: dict[str, tuple[str, int]], depth: int
) -> dict[str, Callable[[random.Random], Call]]:
    cat: Catalog = data["catalog"]
    start, end = data["start"], data["end"]

    def page(filter_: pb.EventFilter, tenant: str, token: str = "", after: int | None = None) -> Call:
        return Call("ListEvents", pb.ListEventsRequest(filter=filter_, page_token=token), tenant, after)

    def window(rng: random.Random) -> pb.EventFilter:
        at = start + (end - start - dt.timedelta(days=1)) * rng.random()
        f = pb.EventFilter()
        f.start_time.FromDatetime(at)
        f.end_time.FromDatetime(at + dt.timedelta(days=1))
        return f

    def count_30_days(rng: random.Random) -> Call:
        f = pb.EventFilter()
        last = hour_floor(end)
        f.start_time.FromDatetime(last - dt.timedelta(days=30))
        f.end_time.FromDatetime(last)
        request = pb.CountEventsRequest(
            filter=f, interval=duration_pb2.Duration(seconds=3600), group_by=pb.GROUP_BY_ACTION
        )
        return Call("CountEvents", request, rng.choice(cat.tenants))

    def deep_page(rng: random.Random) -> Call:
        tenant = rng.choice(sorted(page_tokens))
        token, after = page_tokens[tenant]
        return page(pb.EventFilter(), tenant, token, after)

    return {
        "list: tenant page 1": lambda rng: page(pb.EventFilter(), rng.choice(cat.tenants)),
        "list: + action": lambda rng: page(pb.EventFilter(actions=[rng.choice(cat.actions)]), rng.choice(cat.tenants)),
        "list: + actor": lambda rng: page(
            pb.EventFilter(actor_ids=[rng.choice(cat.actors)[0]]), rng.choice(cat.tenants)
        ),
        "list: + resource": lambda rng: page(
            pb.EventFilter(resource_id=rng.choice(cat.resources)[1]), rng.choice(cat.tenants)
        ),
        "list: + 24 h range": lambda rng: page(window(rng), rng.choice(cat.tenants)),
        f"list: page {depth} via tokens": deep_page,
        "search: free text": lambda rng: page(
            pb.EventFilter(search=rng.choice(cat.resources)[2]), rng.choice(cat.tenants)
        ),
        "count: 30 d hourly by action": count_30_days,
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


def direct_sql(call: Call) -> tuple[str, list[object]]:
    """The statement the service runs for this call (built by the service's own query code)."""
    request = call.request
    where = compile_filter(request.filter, Scope(tenant=call.tenant))
    if call.rpc == "ListEvents":
        return queries.page_sql(
            queries.PageQuery(
                where=where,
                newest_first=True,
                after_position=call.after_position,
                limit=101,
                max_bytes=ApiConfig().max_response_bytes,
            )
        )
    start = request.filter.start_time.ToMicroseconds()
    end = request.filter.end_time.ToMicroseconds()
    query = queries.CountQuery(where=where, group_by="action", histogram=(start, end, request.interval.seconds * 10**6))
    source = queries.count_source(query)
    if source is CountSource.ACTION_PROJECTION:  # the rows only: the service adds them up in Python
        sql, args = queries.action_rows_sql(query)
    else:
        sql, args = queries.count_sql(query, source)
    return sql, args


async def timed(calls: Sequence[Call], run: Callable[[Call], Awaitable[Any]]) -> list[float]:
    latencies = []
    for call in calls:
        started = time.perf_counter()
        await run(call)
        latencies.append(time.perf_counter() - started)
    return latencies


async def deep_page_tokens(
    stub, tokens: dict[str, str], tenants: Sequence[str], depth: int
) -> dict[str, tuple[str, int]]:
    """(token of page `depth`, the position it continues after) for each tenant, by walking the pages."""
    found = {}
    for tenant in tenants:
        token, last_position = "", 0
        metadata = (("authorization", f"Bearer {tokens[tenant]}"),)
        for _ in range(depth - 1):
            page = await stub.ListEvents(pb.ListEventsRequest(page_token=token), metadata=metadata)
            token, last_position = page.next_page_token, page.events[-1].position
        if not token:
            raise RuntimeError(f"{tenant} has fewer than {depth} pages; load more events or lower --page-depth")
        found[tenant] = (token, last_position)
    return found


async def measure(
    args: argparse.Namespace, postgres: EmbeddedPostgres, nats_url: str, data: dict[str, Any]
) -> dict[str, Any]:
    cat: Catalog = data["catalog"]
    auth = AuthConfig(jwt_secret=SECRET)
    tokens = {t: mint_token(auth, subject="bench-admin", tenant=t, admin=True, ttl_seconds=7200) for t in cat.tenants}
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUDIT_")} | {
        "AUDIT_DATABASE_URL": postgres.url("audit", user=APP_ROLE),
        "AUDIT_NATS_URL": nats_url,
        "AUDIT_AUTH_JWT_SECRET": SECRET,
        "AUDIT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AUDIT_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen([sys.executable, "-m", "audit_service.cli", "serve"], env=env, cwd=REPO_ROOT)  # noqa: ASYNC220
    results: dict[str, Any] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the API did not start") from None
                    await asyncio.sleep(0.2)
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            kinds = [k for k in args.kinds.split(",") if k]
            direct = await asyncpg.connect(postgres.url("audit", user=APP_ROLE))
            page_tokens: dict[str, tuple[str, int]] = {}
            if "list" in kinds:
                depth = args.page_depth
                largest = [
                    row["tenant"]
                    for row in await direct.fetch(
                        "SELECT tenant FROM audit_events GROUP BY tenant ORDER BY count(*) DESC LIMIT $1",
                        DEEP_PAGE_TENANTS,
                    )
                ]
                print(f"walking {depth - 1} pages of tenants {', '.join(largest)} for page-{depth} tokens", flush=True)
                page_tokens = await deep_page_tokens(stub, tokens, largest, depth)
            makers = request_makers(data, page_tokens, args.page_depth)
            try:
                for name, make in makers.items():
                    if name.split(":", 1)[0] not in kinds:
                        continue
                    rng = random.Random(name)
                    calls = [make(rng) for _ in range(WARMUP_CALLS + args.calls)]

                    async def via_api(call: Call) -> Any:
                        method = getattr(stub, call.rpc)
                        return await method(
                            call.request, metadata=(("authorization", f"Bearer {tokens[call.tenant]}"),)
                        )

                    async def via_sql(call: Call) -> Any:
                        sql, sql_args = direct_sql(call)
                        return await direct.fetch(sql, *sql_args)

                    await timed(calls[:WARMUP_CALLS], via_api)
                    api_latencies = await timed(calls[WARMUP_CALLS:], via_api)
                    await timed(calls[:WARMUP_CALLS], via_sql)
                    sql_latencies = await timed(calls[WARMUP_CALLS:], via_sql)
                    results[name] = {"api": summary(api_latencies), "sql": summary(sql_latencies)}
                    print(f"  {figures_line(name, results[name])}", flush=True)
            finally:
                await direct.close()
    finally:
        server.terminate()
        server.wait(30)
    return results


def figures_line(name: str, figures: dict[str, Any]) -> str:
    api, sql = figures["api"], figures["sql"]
    return (
        f"{name:<32} API p50 {api['p50_ms']:7.2f}  p95 {api['p95_ms']:7.2f}  p99 {api['p99_ms']:7.2f} ms   "
        f"| SQL p50 {sql['p50_ms']:7.2f}  p95 {sql['p95_ms']:7.2f}  p99 {sql['p99_ms']:7.2f} ms"
    )


def targets(results: dict[str, Any], depth: int) -> dict[str, bool]:
    found: dict[str, bool] = {}
    lists = [v["api"]["p99_ms"] for k, v in results.items() if k.startswith("list:")]
    if lists:
        found["list p99 <= 25 ms"] = max(lists) <= 25
    deep, first = results.get(f"list: page {depth} via tokens"), results.get("list: tenant page 1")
    if deep and first:
        found[f"page {depth} p50 within 1.5x of page 1"] = deep["api"]["p50_ms"] <= 1.5 * first["api"]["p50_ms"]
    count = results.get("count: 30 d hourly by action")
    if count:
        found["count p99 <= 50 ms"] = count["api"]["p99_ms"] <= 50
    search = results.get("search: free text")
    if search:
        found["search p95 <= 150 ms"] = search["api"]["p95_ms"] <= 150
    return found


async def prepare_log(postgres: EmbeddedPostgres, events: int, seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Creates, migrates and loads the "audit" database of `postgres` with `events` events: returns the facts
    about the data (load) and PostgreSQL's settings."""
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:
        await admin.execute('CREATE DATABASE "audit"')
    finally:
        await admin.close()
    owner_url = postgres.url("audit")
    conn = await asyncpg.connect(owner_url)
    try:
        await migrate(conn)
        settings = {n: await conn.fetchval(f"SHOW {n}") for n in ("server_version", "shared_buffers", "fsync")}
    finally:
        await conn.close()
    await grant_app_role(owner_url)
    print(f"loading {events:,} events over {DAYS} days ...", flush=True)
    started = time.perf_counter()
    data = await load(owner_url, events, seed=seed)
    print(f"loaded in {time.perf_counter() - started:.0f} s; log + indexes: {data['size']}", flush=True)
    return data, settings


async def benchmark(args: argparse.Namespace, postgres: EmbeddedPostgres, nats: NatsServer) -> dict[str, Any]:
    data, settings = await prepare_log(postgres, args.events, args.seed)
    results = await measure(args, postgres, nats.url, data)
    return {
        "benchmark": "query_latency",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "postgres": settings,
        "events": args.events,
        "calls_per_kind": args.calls,
        "log_size": data["size"],
        "results": results,
        "targets": targets(results, args.page_depth),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1000000)")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per query kind (default 1000)")
    parser.add_argument("--kinds", default="list,search,count", help="query kinds to run (default list,search,count)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--page-depth", type=int, default=DEFAULT_PAGE_DEPTH, help="the deep page measured (default 500)"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="audit-query-bench-"))
    postgres = EmbeddedPostgres(workdir / "pg", port=free_port(), durable=False)
    nats = NatsServer(workdir / "nats", port=free_port())  # serve waits for NATS (its live feed) before serving
    try:
        postgres.start()
        nats.start()
        summary_ = asyncio.run(benchmark(args, postgres, nats))
    finally:
        nats.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("=" * 100)
    print(
        f"query_latency: {summary_['events']:,} events ({summary_['log_size']}), {args.calls} calls per kind, "
        f"PostgreSQL {summary_['postgres']['server_version']} shared_buffers={summary_['postgres']['shared_buffers']}, "
        f"{os.cpu_count()} cores"
    )
    for name, figures in summary_["results"].items():
        api, sql = figures["api"], figures["sql"]
        print(
            f"  {name:<32} API p50 {api['p50_ms']:7.2f}  p95 {api['p95_ms']:7.2f}  p99 {api['p99_ms']:7.2f} ms   "
            f"| SQL p50 {sql['p50_ms']:7.2f}  p95 {sql['p95_ms']:7.2f}  p99 {sql['p99_ms']:7.2f} ms"
        )
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in summary_["targets"].items()))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"query_latency-{summary_['events']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary_, indent=2) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
