"""What telemetry costs: the ingest worker's drain rate and the p50/p99 of ListEvents, with tracing and metrics
off and on, in the same run, on the same servers.

Modes (each run does every mode, in turn, so that a change in the machine's load affects them alike):
- off: no OTEL_* variables, no AUDIT_METRICS_ADDRESS (the default).
- collector: traces and metrics exported over OTLP/gRPC to a real collector (tests/otlp_receiver.py, a process
  of its own that decodes every span, on the same cores), plus Prometheus on AUDIT_METRICS_ADDRESS, which is
  scraped once a second.
- unreachable: the same, to an OTLP endpoint where nothing listens (spans and metrics are dropped and counted).
- asyncpg (only where opentelemetry-instrumentation-asyncpg is importable): `collector` plus a span per
  asyncpg statement (AsyncPGInstrumentor), to decide whether that instrumentation is cheap.

Drain: N events (built as in ingest_throughput.py) are published with the worker stopped; then the worker
(`python -m audit_service.cli ingest`, its own process) is started with the mode's environment and the log's
head polled every 50 ms; rate = events committed between the first poll that sees events and the one that
sees all N, over that time; the worker's CPU time (from /proc) over the same interval, per event, is the
figure least disturbed by other load on the machine. RPC: `audit-service serve` with the mode's environment on
that database; --calls sequential ListEvents(page_size=100) calls after a warm-up, latency measured by this process.

Figures are medians over --runs runs; every run's value is printed too. Nothing here asserts on time.

Usage: .venv/bin/python bench/telemetry_cost.py [--events 50000] [--runs 3] [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import audit_client
import grpc
import nats
import nats.js.errors
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.config import IngestConfig, NatsConfig
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port, port_is_open
from audit_service.devstack.stack import APP_ROLE

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from ingest_throughput import (  # noqa: E402  (a sibling script)
    MAX_IN_FLIGHT,
    Stack,
    _cpu_seconds,
    build_events,
    checkpoint,
    create_database,
    percentile_ms,
    publish_all,
)

RESULTS_DIR = REPO_ROOT / "bench" / "results"
HEAD_POLL_SECONDS = 0.05
WARMUP_CALLS = 50
ASYNCPG_BOOT = (
    "import sys; from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor; "
    "AsyncPGInstrumentor().instrument(); from audit_service.cli import main; sys.exit(main(sys.argv[1:]))"
)


def modes() -> list[str]:
    found = ["off", "collector", "unreachable"]
    if importlib.util.find_spec("opentelemetry.instrumentation.asyncpg") is not None:
        found.append("asyncpg")
    return found


def mode_env(mode: str, collector_endpoint: str, unreachable_endpoint: str, metrics_port: int) -> dict[str, str]:
    if mode == "off":
        return {}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": unreachable_endpoint if mode == "unreachable" else collector_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "AUDIT_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
    }


def start_process(
    stack: Stack, command: str, database: str, nats_config: NatsConfig, mode: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    full = {name: value for name, value in os.environ.items() if not name.startswith(("AUDIT_", "OTEL_"))}
    full |= {
        "AUDIT_DATABASE_URL": stack.postgres.url(database, user=APP_ROLE),
        "AUDIT_NATS_URL": stack.nats.url,
        "AUDIT_SUBJECT_PREFIX": nats_config.subject_prefix,
        "AUDIT_STREAM_PREFIX": nats_config.stream_prefix,
        "AUDIT_LOG_LEVEL": "WARNING",
        "AUDIT_AUTH_DISABLED": "true",
        **env,
    }
    argv = (
        [sys.executable, "-c", ASYNCPG_BOOT, command]
        if mode == "asyncpg"
        else [sys.executable, "-m", "audit_service.cli", command]
    )
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=full, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def scraping(port: int, stop: asyncio.Event) -> None:
    """Scrapes /metrics once a second, as Prometheus would (more often than it usually does)."""

    def scrape() -> None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            r.read()

    while not stop.is_set():
        await asyncio.to_thread(scrape)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def drain(
    stack: Stack, name: str, events, mode: str, env: dict[str, str], workdir: Path
) -> tuple[float, float, str]:
    """Returns (drain events/s, the worker's CPU microseconds per event drained, database name)."""
    await create_database(stack.postgres, name, app_role=True)
    nats_config = NatsConfig(subject_prefix=name.replace("_", ""), stream_prefix=name.upper())
    log = workdir / f"{name}.log"
    # Start once to provision the streams and the consumer, then stop: the events wait in the stream.
    worker = start_process(stack, "ingest", name, nats_config, "off", {}, log)
    nc = await nats.connect(stack.nats.url)
    try:
        js, deadline = nc.jetstream(), time.monotonic() + 60
        while True:
            try:
                await js.consumer_info(nats_config.events_stream, IngestConfig().durable)
                break
            except nats.js.errors.NotFoundError:
                pass
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the worker did not provision its consumer: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    await asyncio.to_thread(stop_process, worker)
    async with audit_client.connect(
        stack.nats.url, subject_prefix=nats_config.events_subject_prefix, max_in_flight=MAX_IN_FLIGHT
    ) as publisher:
        failures, _ = await publish_all(publisher, events)
    if failures:
        raise RuntimeError(f"{failures} publishes failed")
    url = stack.postgres.url(name)
    await checkpoint(url)
    conn = await asyncpg.connect(url)
    worker = start_process(stack, "ingest", name, nats_config, mode, env, log)
    stop_scraping = asyncio.Event()
    scraper = (
        asyncio.create_task(scraping(int(env["AUDIT_METRICS_ADDRESS"].rsplit(":", 1)[1]), stop_scraping))
        if "AUDIT_METRICS_ADDRESS" in env
        else None
    )
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 900
        while True:
            position = await conn.fetchval("SELECT last_position FROM audit_log_head")
            now = time.perf_counter()
            if first is None and position > 0:
                first = (now, position)
                cpu_at_first = _cpu_seconds(worker.pid)
            if position >= len(events):
                cpu_at_end = _cpu_seconds(worker.pid)
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker gone or too slow ({position} events): {log.read_text()[-2000:]}")
            await asyncio.sleep(HEAD_POLL_SECONDS)
    finally:
        stop_scraping.set()
        if scraper is not None:
            await scraper
        await conn.close()
        await asyncio.to_thread(stop_process, worker)
    assert first is not None
    if first[1] >= len(events):
        raise RuntimeError("the whole backlog was committed before the first poll; use more --events")
    drained = len(events) - first[1]
    return drained / (now - first[0]), 1e6 * (cpu_at_end - cpu_at_first) / drained, name


async def rpc_latency(stack: Stack, database: str, mode: str, env: dict[str, str], calls: int, workdir: Path):
    port = free_port()
    nats_config = NatsConfig(subject_prefix=database.replace("_", ""), stream_prefix=database.upper())
    api = start_process(
        stack,
        "serve",
        database,
        nats_config,
        mode,
        env | {"AUDIT_GRPC_ADDRESS": f"127.0.0.1:{port}"},
        workdir / "api.log",
    )
    try:
        deadline = time.monotonic() + 60
        while not port_is_open("127.0.0.1", port):
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start: {(workdir / 'api.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            latencies = []
            for index in range(WARMUP_CALLS + calls):
                started = time.perf_counter()
                await stub.ListEvents(pb.ListEventsRequest(page_size=100))
                if index >= WARMUP_CALLS:
                    latencies.append(time.perf_counter() - started)
    finally:
        await asyncio.to_thread(stop_process, api)
    return percentile_ms(latencies, 0.50), percentile_ms(latencies, 0.99)


async def benchmark(args: argparse.Namespace, stack: Stack, workdir: Path, endpoint: str) -> dict[str, Any]:
    events = build_events(args.events, seed=1)
    chosen = modes()
    results: dict[str, dict[str, list[float]]] = {
        mode: {"drain": [], "cpu_us": [], "p50": [], "p99": []} for mode in chosen
    }
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for run in range(1, args.runs + 1):
        for mode in chosen:
            env = mode_env(mode, endpoint, unreachable, free_port())
            name = f"tc_{run}_{mode}_{uuid.uuid4().hex[:4]}"
            rate, cpu_us, database = await drain(stack, name, events, mode, env, workdir)
            p50, p99 = await rpc_latency(stack, database, mode, env, args.calls, workdir)
            for key, value in (("drain", rate), ("cpu_us", cpu_us), ("p50", p50), ("p99", p99)):
                results[mode][key].append(round(value, 2))
            print(
                f"run {run} {mode:<12} drain {rate:>9,.0f} ev/s  worker {cpu_us:5.0f} us CPU/event   "
                f"ListEvents p50 {p50:6.2f} ms  p99 {p99:6.2f} ms",
                flush=True,
            )
    medians = {
        mode: {key: statistics.median(values) for key, values in figures.items()} for mode, figures in results.items()
    }
    off = medians["off"]
    cost = {
        mode: {
            "drain_change_percent": round(100 * (figures["drain"] / off["drain"] - 1), 1),
            "worker_cpu_per_event_change_percent": round(100 * (figures["cpu_us"] / off["cpu_us"] - 1), 1),
            "p99_change_percent": round(100 * (figures["p99"] / off["p99"] - 1), 1),
        }
        for mode, figures in medians.items()
        if mode != "off"
    }
    return {
        "benchmark": "telemetry_cost",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "events": args.events,
        "runs": args.runs,
        "calls": args.calls,
        "per_run": results,
        "median": medians,
        "cost_vs_off": cost,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="audit-bench-telemetry-"))
    stack = Stack(
        workdir=workdir,
        postgres=EmbeddedPostgres(workdir / "pg", port=free_port(), durable=True),
        nats=NatsServer(workdir / "nats", port=free_port()),
    )
    collector_port = free_port()
    collector = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp_receiver", str(collector_port)], cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    try:
        stack.start()
        summary = asyncio.run(benchmark(args, stack, workdir, f"http://127.0.0.1:{collector_port}"))
    finally:
        collector.send_signal(signal.SIGTERM)
        summary_of_collector = collector.communicate(timeout=60)[0].decode().strip()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary["received_by_collector"] = summary_of_collector
    print("=" * 100)
    print(f"telemetry_cost: {args.events} events per drain, {args.runs} runs, {args.calls} ListEvents per run")
    for mode, figures in summary["median"].items():
        change = summary["cost_vs_off"].get(mode)
        versus = (
            f"   vs off: drain {change['drain_change_percent']:+.1f} %, "
            f"CPU/event {change['worker_cpu_per_event_change_percent']:+.1f} %, "
            f"p99 {change['p99_change_percent']:+.1f} %"
            if change
            else ""
        )
        print(
            f"median {mode:<12} drain {figures['drain']:>9,.0f} ev/s  {figures['cpu_us']:5.0f} us CPU/event  "
            f"p50 {figures['p50']:6.2f} ms  "
            f"p99 {figures['p99']:6.2f} ms{versus}"
        )
    print(f"received by the collector: {summary['received_by_collector']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"telemetry_cost-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
