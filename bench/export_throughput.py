"""ExportEvents: throughput of CSV, NDJSON and log-line exports, the API's memory while it streams, and the
machine's own limit for the same rows.

What is measured, on real servers started in a temporary directory:

- Data: --events events (default 200,000) loaded with query_latency.py's loader (20 tenants, 300 actors,
  5,000 resources, rows sealed by the service's own code and COPYed; PostgreSQL with fsync off for loading).
- The API: `python -m audit_service.cli serve` (AUDIT_AUTH_DISABLED=true) as its own process. For each format,
  one ExportEvents call with an empty filter (every event, oldest first) read to the end by this process,
  which only counts bytes and events; events/s and MB/s from the call until its last chunk. The API's RSS is
  sampled from /proc every 50 ms during the call: its peak, and the peak minus the RSS before the call.
- The machine's limit, in the same run: (a) `COPY (SELECT <the CSV columns> ... ORDER BY position) TO STDOUT
  WITH CSV HEADER` through asyncpg's copy_from_query, the bytes counted as they arrive: PostgreSQL writing the
  same CSV itself, one statement; (b) every stored column read with asyncpg by keyset pages of 1,000 (the
  reads the service itself makes). The ratio API CSV / COPY CSV is printed.
- Median of --runs runs (default 3), each run measuring every format and both limits in turn.

The client, the API and PostgreSQL share the machine's cores; run it on an otherwise idle machine. Figures are
printed and written as JSON to bench/results/; nothing asserts on time.

Usage: .venv/bin/python bench/export_throughput.py [--events 200000] [--runs 3]
       .venv/bin/python bench/export_throughput.py --events 1000000      # the 1M repeat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.config import NatsConfig
from audit_service.core.records import columns_sql
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE
from ingest_throughput import create_database, server_info
from query_latency import load
from tail_latency import start_api, stop_api

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RSS_SAMPLE_SECONDS = 0.05
FORMATS = {
    "CSV": pb.EXPORT_FORMAT_CSV,
    "NDJSON": pb.EXPORT_FORMAT_NDJSON,
    "log lines": pb.EXPORT_FORMAT_LOG_LINES,
}
COPY_CSV = (
    "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS time, action, outcome, "
    "coalesce(actor_slug, actor_email, actor_id, actor_display_name) AS actor, actor_type, resource_type, "
    "resource_name, resource_id, request_route AS route, ip_address, user_agent, message, trace_id "
    "FROM audit_events ORDER BY position"
)
"""The CSV's columns, written by PostgreSQL (outcome and actor type as numbers: close enough for a limit)."""
SQL_PAGE = 1000
SQL_READ = f"SELECT {columns_sql()} FROM audit_events WHERE position > $1 ORDER BY position LIMIT {SQL_PAGE}"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def sampling_rss(pid: int, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Runs `run` while sampling the RSS of `pid`; adds the figures to its result."""
    before = peak = rss_bytes(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample())
    try:
        result = await run()
    finally:
        stop.set()
        await sampler
    return result | {"rss_before_mib": round(before / 2**20, 1), "rss_peak_mib": round(peak / 2**20, 1)}


def rates(events: int, size: int, seconds: float) -> dict[str, Any]:
    return {
        "events": events,
        "bytes": size,
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds, 1),
        "mb_per_second": round(size / seconds / 1e6, 2),
    }


async def export_via_api(stub: audit_service_pb2_grpc.AuditServiceStub, export_format: int) -> dict[str, Any]:
    started = time.perf_counter()
    events = size = chunks = 0
    async for chunk in stub.ExportEvents(pb.ExportEventsRequest(format=export_format)):
        events += chunk.events
        size += len(chunk.data)
        chunks += 1
    return rates(events, size, time.perf_counter() - started) | {"chunks": chunks}


async def copy_csv(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    size = 0

    async def count(data: bytes) -> None:
        nonlocal size
        size += len(data)

    try:
        events = await conn.fetchval("SELECT count(*) FROM audit_events")
        started = time.perf_counter()
        await conn.copy_from_query(COPY_CSV, output=count, format="csv", header=True)
        return rates(events, size, time.perf_counter() - started)
    finally:
        await conn.close()


async def select_pages(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await conn.fetch(SQL_READ, 2**62)  # prepares the statement outside the timing
        started = time.perf_counter()
        after = events = 0
        while rows := await conn.fetch(SQL_READ, after):
            events += len(rows)
            after = rows[-1]["position"]
        return rates(events, 0, time.perf_counter() - started)
    finally:
        await conn.close()


async def benchmark(args: argparse.Namespace, postgres: EmbeddedPostgres, nats: NatsServer) -> dict[str, Any]:
    servers = await server_info(postgres)
    owner_url = await create_database(postgres, "export_bench", app_role=True)
    print(f"loading {args.events:,} events ...", flush=True)
    started = time.perf_counter()
    data = await load(owner_url, args.events, seed=1)
    print(f"  loaded in {time.perf_counter() - started:.0f} s; log + indexes: {data['size']}", flush=True)
    app_url = postgres.url("export_bench", user=APP_ROLE)
    nats_config = NatsConfig(subject_prefix="benchexport", stream_prefix="BENCHEXPORT")
    api = await start_api(app_url, nats.url, nats_config, Path(args.workdir) / "api.log")
    runs: list[dict[str, Any]] = []
    try:
        async with grpc.aio.insecure_channel(api.target) as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            await stub.ListEvents(pb.ListEventsRequest(page_size=1000))  # warm: imports, pool, plans
            for run in range(1, args.runs + 1):
                result: dict[str, Any] = {"run": run}
                for name, export_format in FORMATS.items():
                    result[name] = await sampling_rss(
                        api.process.pid, lambda export_format=export_format: export_via_api(stub, export_format)
                    )
                    if result[name]["events"] != args.events:
                        raise RuntimeError(f"{name}: exported {result[name]['events']:,} of {args.events:,} events")
                result["COPY CSV"] = await copy_csv(app_url)
                result["SELECT pages"] = await select_pages(app_url)
                runs.append(result)
                print(
                    f"  run {run}: "
                    + "; ".join(
                        f"{name} {result[name]['events_per_second']:,.0f} events/s"
                        + (f" {result[name]['mb_per_second']:,.1f} MB/s" if result[name]["bytes"] else "")
                        for name in (*FORMATS, "COPY CSV", "SELECT pages")
                    ),
                    flush=True,
                )
    finally:
        await asyncio.to_thread(stop_api, api)
    medians = {
        name: {
            key: statistics.median(run[name][key] for run in runs)
            for key in ("events_per_second", "mb_per_second", "seconds")
        }
        for name in (*FORMATS, "COPY CSV", "SELECT pages")
    }
    for name in FORMATS:
        medians[name]["rss_peak_mib"] = max(run[name]["rss_peak_mib"] for run in runs)
        medians[name]["rss_growth_mib"] = max(run[name]["rss_peak_mib"] - run[name]["rss_before_mib"] for run in runs)
        medians[name]["bytes"] = runs[0][name]["bytes"]
    medians["COPY CSV"]["bytes"] = runs[0]["COPY CSV"]["bytes"]
    return {
        "benchmark": "export_throughput",
        "events": args.events,
        "log_size": data["size"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "servers": servers,
        "runs": runs,
        "medians": medians,
        "ratio_api_csv_to_copy_csv": round(
            medians["CSV"]["events_per_second"] / medians["COPY CSV"]["events_per_second"], 3
        ),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    medians = summary["medians"]
    lines = [
        "",
        f"ExportEvents over {summary['events']:,} events ({summary['log_size']}), median of {len(summary['runs'])} "
        f"runs, {summary['machine']['cpus']} cores shared by client, API and PostgreSQL:",
        f"  {'':<26}{'events/s':>12}{'MB/s':>9}{'size MB':>10}{'seconds':>9}{'API RSS peak':>14}{'growth':>9}",
    ]
    for name in FORMATS:
        m = medians[name]
        lines.append(
            f"  {'API ' + name:<26}{m['events_per_second']:>12,.0f}{m['mb_per_second']:>9,.1f}"
            f"{m['bytes'] / 1e6:>10,.1f}{m['seconds']:>9.2f}"
            f"{m['rss_peak_mib']:>10,.0f} MiB{m['rss_growth_mib']:>5,.0f} MiB"
        )
    for name, label in (("COPY CSV", "limit: COPY ... TO STDOUT"), ("SELECT pages", "limit: SELECT pages")):
        m = medians[name]
        size = f"{m['bytes'] / 1e6:>10,.1f}" if "bytes" in m else f"{'':>10}"
        mb = f"{m['mb_per_second']:>9,.1f}" if "bytes" in m else f"{'':>9}"
        lines.append(f"  {label:<26}{m['events_per_second']:>12,.0f}{mb}{size}{m['seconds']:>9.2f}")
    lines.append(f"  API CSV / COPY CSV: {summary['ratio_api_csv_to_copy_csv']:.3f}")
    return lines


def write_results(summary: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"export_throughput-{summary['events']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the log (default 200000)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1:
        parser.error("--events and --runs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"audit-export-bench-{uuid.uuid4().hex[:6]}-"))
    args.workdir = str(workdir)
    postgres = EmbeddedPostgres(workdir / "pg", port=free_port(), durable=False)
    nats = NatsServer(workdir / "nats", port=free_port())
    try:
        postgres.start()
        nats.start()
        print(f"servers up in {workdir}: PostgreSQL :{postgres.port}, NATS :{nats.port}", flush=True)
        summary = asyncio.run(benchmark(args, postgres, nats))
    finally:
        nats.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary_lines(summary)))
    print(f"results written to {write_results(summary).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
