"""Console: time to the first rendered page of the timeline and of the graph on a large log, measured in the browser.

What is measured:

1. A log of N events (default 1M: 20 tenants over 90 days, query_latency.prepare_log) in an embedded PostgreSQL.
2. `audit-service serve` as its own process with its HTTP port, twice: with authentication on, the console signed
   in as an admin of the largest tenant (what a tenant's user sees), and with authentication off (every tenant:
   the whole log behind each view).
3. Debian's Chromium (Playwright) opens the console in a fresh context (no cache) for each view, last 24 hours, 7
   days and 30 days, --runs times. In the page, User Timing marks say when the timeline's rows and the graph were
   first rendered (main.js: performance.mark), Navigation Timing when the page itself had loaded, and Resource
   Timing how long the ListEvents and CountEvents calls took as the browser saw them.
4. The machine's own floor, in the same run: the exact requests the page sent (read off its network), replayed
   over the gRPC port with the generated stub.

Figures are medians and 90th percentiles in ms; nothing asserts on time.

Usage: .venv/bin/python bench/console_render.py [--events 1000000] [--runs 11]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.auth.tokens import mint_token
from audit_service.config import AuthConfig, NatsConfig
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE
from google.protobuf import json_format
from playwright.async_api import Browser, async_playwright
from query_latency import REPO_ROOT, RESULTS_DIR, SECRET, percentile, prepare_log
from tail_latency import start_api, stop_api

sys.path.insert(0, str(REPO_ROOT))
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # the tests' launch of Debian's Chromium

VIEWS = ("24h", "7d", "30d")
WARMUP_RUNS = 2
RENDER_TIMEOUT_MS = 120_000


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1), "p90_ms": round(percentile(values, 0.90), 1)}


@contextlib.asynccontextmanager
async def serving(postgres: EmbeddedPostgres, nats: NatsServer, *, auth: bool) -> AsyncIterator[tuple[str, str]]:
    """`audit-service serve` with its HTTP port (tail_latency.start_api): yields (console URL, gRPC target)."""
    http_port = free_port()
    api = await start_api(
        postgres.url("audit", user=APP_ROLE),
        nats.url,
        NatsConfig(subject_prefix="benchconsole", stream_prefix="BENCHCONSOLE"),
        Path(tempfile.gettempdir()) / f"console-render-api-{os.getpid()}.log",
        jwt_secret=SECRET if auth else None,
        http_port=http_port,
    )
    try:
        yield f"http://127.0.0.1:{http_port}", api.target
    finally:
        stop_api(api)


async def render_once(browser: Browser, url: str, view: str, token: str) -> dict[str, Any]:
    """One cold load of a view: the page's timings and the requests it sent."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        sent: dict[str, str] = {}
        page.on(
            "request",
            lambda request: (
                request.url.endswith(("/ListEvents", "/CountEvents"))
                and sent.setdefault(request.url.rsplit("/", 1)[1], request.post_data or "")
            ),
        )
        await page.goto(f"{url}/?preset={view}" + (f"#token={token}" if token else ""))
        # Selectors, not a predicate: the page's CSP forbids the eval a string predicate needs.
        await page.wait_for_selector("#timeline-title[data-loaded]", state="attached", timeout=RENDER_TIMEOUT_MS)
        await page.wait_for_selector("#chart[data-loaded]", state="attached", timeout=RENDER_TIMEOUT_MS)
        timings = await page.evaluate(
            """() => {
              const first = (name) => performance.getEntriesByName(name)[0].startTime;
              const call = (method) => performance.getEntriesByType('resource')
                .find((entry) => entry.name.endsWith('/' + method));
              const nav = performance.getEntriesByType('navigation')[0];
              return {
                timeline: first('timeline-rendered'), graph: first('graph-rendered'),
                page_loaded: nav.domContentLoadedEventEnd,
                list_call: call('ListEvents').duration, count_call: call('CountEvents').duration,
                rows: document.querySelectorAll('#events tbody tr').length,
                total: document.getElementById('total').textContent,
              };
            }"""
        )
        return {"timings": timings, "sent": sent}
    finally:
        await context.close()


async def grpc_floor(stub: audit_service_pb2_grpc.AuditServiceStub, sent: dict[str, str], token: str) -> dict:
    """The page's two requests, replayed over gRPC: the time each takes without HTTP, JSON and the browser."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    floor = {}
    for method, message in (("ListEvents", pb.ListEventsRequest), ("CountEvents", pb.CountEventsRequest)):
        request = json_format.Parse(sent[method], message())
        started = time.perf_counter()
        await getattr(stub, method)(request, metadata=metadata)
        floor[method] = (time.perf_counter() - started) * 1000
    return floor


async def measure_scope(
    browser: Browser, postgres: EmbeddedPostgres, nats: NatsServer, scope: str, tenant: str, runs: int
) -> dict:
    auth = scope == "tenant admin"
    token = mint_token(AuthConfig(jwt_secret=SECRET), subject="bench", tenant=tenant, admin=True, ttl_seconds=7200)
    token = token if auth else ""
    results = {}
    async with (
        serving(postgres, nats, auth=auth) as (url, target),
        grpc.aio.insecure_channel(target) as channel,
    ):
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        for view in VIEWS:
            samples, floors = [], []
            for run in range(WARMUP_RUNS + runs):
                sample = await render_once(browser, url, view, token)
                floor = await grpc_floor(stub, sample["sent"], token)
                if run >= WARMUP_RUNS:
                    samples.append(sample["timings"])
                    floors.append(floor)
            figures = {
                name: stats([sample[name] for sample in samples])
                for name in ("page_loaded", "timeline", "graph", "list_call", "count_call")
            }
            figures["grpc_list"] = stats([floor["ListEvents"] for floor in floors])
            figures["grpc_count"] = stats([floor["CountEvents"] for floor in floors])
            figures["rows"] = samples[-1]["rows"]
            figures["graph_total"] = samples[-1]["total"]
            results[view] = figures
            print(f"  {scope:<12} {view:>3}  {line(figures)}", flush=True)
    return results


def line(figures: dict[str, Any]) -> str:
    def cell(name: str) -> str:
        return f"{figures[name]['median_ms']:7.1f} ({figures[name]['p90_ms']:7.1f})"

    return (
        f"page {cell('page_loaded')}  timeline {cell('timeline')}  graph {cell('graph')}  | browser ListEvents "
        f"{cell('list_call')} CountEvents {cell('count_call')}  | gRPC ListEvents {cell('grpc_list')} "
        f"CountEvents {cell('grpc_count')}  [{figures['graph_total']}]"
    )


async def benchmark(args: argparse.Namespace, postgres: EmbeddedPostgres, nats: NatsServer) -> dict[str, Any]:
    await prepare_log(postgres, args.events, args.seed)
    conn = await asyncpg.connect(postgres.url("audit"))
    try:
        tenant = await conn.fetchval("SELECT tenant FROM audit_events GROUP BY tenant ORDER BY count(*) DESC LIMIT 1")
        tenant_events = await conn.fetchval("SELECT count(*) FROM audit_events WHERE tenant = $1", tenant)
    finally:
        await conn.close()
    print(f"median (p90) ms over {args.runs} cold loads per view; tenant admin of {tenant} ({tenant_events:,} events)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            results = {
                scope: await measure_scope(browser, postgres, nats, scope, tenant, args.runs)
                for scope in ("tenant admin", "all tenants")
            }
        finally:
            await browser.close()
    return {
        "benchmark": "console_render",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "events": args.events,
        "tenant": tenant,
        "tenant_events": tenant_events,
        "runs": args.runs,
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1000000)")
    parser.add_argument("--runs", type=int, default=11, help="measured cold loads per view (default 11)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="audit-console-bench-"))
    postgres = EmbeddedPostgres(workdir / "pg", port=free_port(), durable=False)
    nats = NatsServer(workdir / "nats", port=free_port())  # the API's live feed (TailEvents) connects to NATS
    try:
        postgres.start()
        nats.start()
        summary = asyncio.run(benchmark(args, postgres, nats))
    finally:
        nats.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"console_render-{summary['events']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
