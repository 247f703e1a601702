"""Publishing from one producer process: `publish_many` against a loop of `publish`, on a real JetStream.

What is measured: a nats-server with JetStream file storage is started in a temporary directory, with one stream
on the benchmark's subjects (as the service's stream: file storage, deduplication on Nats-Msg-Id). One producer
process (this script) publishes --events realistic events (new event ids each run, so JetStream stores every one)
in each of these ways, from a clean stream, and the time from the first call until the last acknowledgement gives
events per second (completing, validating and encoding the events included):

- `publish` loop: `await publisher.publish(event)` for one event after the other (one acknowledgement in flight).
- `publish_many`: `await publisher.publish_many(events)` (window --window, default 256).
- `gather(publish)`: one task per event, `asyncio.gather(*(publisher.publish(e) for e in events))`, the way to
  get acknowledgements in flight before `publish_many` (bounded by max_in_flight, 1024).
- sync `publish` loop and sync `publish_many`: the same through `connect_sync()` (a background event loop thread).

The ways take turns within each run, so that a change in the machine's load touches them alike; medians over
--runs. Everything (producer, nats-server) shares the machine's cores. Figures are printed and written as JSON to
bench/results/; nothing asserts on time.

    .venv/bin/python bench/publish_many.py                         # 20k events x 5 runs
    .venv/bin/python bench/publish_many.py --events 2000 --runs 1  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import audit_client
import nats
from audit.v1 import event_pb2
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SUBJECT_PREFIX = "bench.events"
STREAM = "BENCH_EVENTS"
TENANTS = [f"tenant-{n:02d}" for n in range(20)]


def build_events(count: int) -> list[event_pb2.AuditEvent]:
    """Realistic events without ids: the publisher gives each a new UUIDv7 (about 400 bytes encoded)."""
    events = []
    for n in range(count):
        event = event_pb2.AuditEvent(
            tenant=TENANTS[n % len(TENANTS)],
            action=("deployment.update", "api_key.create", "secret.read", "user.login")[n % 4],
            outcome=event_pb2.OUTCOME_SUCCESS,
            actor=event_pb2.Subject(
                id=f"user-{n % 300}",
                type=event_pb2.SUBJECT_TYPE_USER,
                slug=f"user{n % 300}",
                email=f"user{n % 300}@example.com",
            ),
            resource=event_pb2.Resource(type="deployment", id=f"dep-{n % 5000}", name=f"service-{n % 5000}"),
            request=event_pb2.RequestContext(
                route="/api/v1/deployments/{id}", method="PATCH", ip_address="10.1.2.3", user_agent="bench/1.0"
            ),
            cluster_id="cluster-a",
            workspace_id=f"ws-{n % 40}",
            message=f"updated deployment service-{n % 5000}",
        )
        event.metadata.update({"replicas": n % 7, "strategy": "rolling", "labels": {"team": "platform"}})
        event.change.after.update({"replicas": n % 7, "image": f"registry.example.com/service:{n % 97}"})
        events.append(event)
    return events


Mode = Callable[[str, list[event_pb2.AuditEvent], int], Awaitable[int]]


async def publish_loop(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    async with audit_client.connect(url, subject_prefix=SUBJECT_PREFIX) as publisher:
        return len([await publisher.publish(event) for event in events])


async def publish_many(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    async with audit_client.connect(url, subject_prefix=SUBJECT_PREFIX) as publisher:
        return len(await publisher.publish_many(events, window=window))


async def gather_publish(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    async with audit_client.connect(url, subject_prefix=SUBJECT_PREFIX) as publisher:
        return len(await asyncio.gather(*(publisher.publish(event) for event in events)))


def _sync_loop(url: str, events: list[event_pb2.AuditEvent]) -> int:
    with audit_client.connect_sync(url, subject_prefix=SUBJECT_PREFIX) as publisher:
        return len([publisher.publish(event) for event in events])


def _sync_many(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    with audit_client.connect_sync(url, subject_prefix=SUBJECT_PREFIX) as publisher:
        return len(publisher.publish_many(events, window=window))


async def sync_publish_loop(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    return await asyncio.to_thread(_sync_loop, url, events)


async def sync_publish_many(url: str, events: list[event_pb2.AuditEvent], window: int) -> int:
    return await asyncio.to_thread(_sync_many, url, events, window)


MODES: dict[str, Mode] = {
    "publish loop": publish_loop,
    "publish_many": publish_many,
    "gather(publish)": gather_publish,
    "sync publish loop": sync_publish_loop,
    "sync publish_many": sync_publish_many,
}


async def benchmark(args: argparse.Namespace, server: NatsServer) -> dict[str, Any]:
    admin = await nats.connect(server.url, name="bench-admin")
    js = admin.jetstream()
    await js.add_stream(name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"])
    per_run: dict[str, list[float]] = {name: [] for name in MODES}
    try:
        for run in range(1, args.runs + 1):
            for name, mode in MODES.items():
                await js.purge_stream(STREAM)
                events = build_events(args.events)  # untimed; new ids each time (none set: the publisher's)
                started = time.perf_counter()
                acknowledged = await mode(server.url, events, args.window)
                elapsed = time.perf_counter() - started
                stored = (await js.stream_info(STREAM)).state.messages
                if acknowledged != args.events or stored != args.events:
                    raise SystemExit(f"{name}: {acknowledged} acknowledged, {stored} stored of {args.events}")
                per_run[name].append(round(args.events / elapsed, 1))
                print(f"run {run}  {name:<18} {per_run[name][-1]:>10,.0f} events/s", flush=True)
    finally:
        await admin.close()
    return {
        "benchmark": "publish_many",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "events": args.events,
        "runs": args.runs,
        "window": args.window,
        "median_events_per_second": {name: statistics.median(values) for name, values in per_run.items()},
        "per_run_events_per_second": per_run,
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    medians = summary["median_events_per_second"]
    loop = medians["publish loop"]
    lines = [
        "=" * 78,
        f"publish_many vs publish: {summary['events']} events x {summary['runs']} runs, window {summary['window']}, "
        f"{summary['machine']['cpu_count']} CPUs",
        f"{'mode':<20}{'median ev/s':>14}{'min':>12}{'max':>12}{'x loop':>10}",
    ]
    for name, median in medians.items():
        values = summary["per_run_events_per_second"][name]
        lines.append(f"{name:<20}{median:>14,.0f}{min(values):>12,.0f}{max(values):>12,.0f}{median / loop:>10.1f}")
    lines.append("=" * 78)
    return lines


def write_results(summary: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    ignore = RESULTS_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n!.gitignore\n")
    path = RESULTS_DIR / f"publish_many-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per way and run (default 20000)")
    parser.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    parser.add_argument("--window", type=int, default=256, help="publish_many's window (default 256)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1 or args.window < 1:
        parser.error("--events, --runs and --window must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="audit-bench-publish-"))
    server = NatsServer(workdir / "nats", port=free_port())
    try:
        server.start()
        summary = asyncio.run(benchmark(args, server))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary_lines(summary)))
    print(f"results written to {write_results(summary).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
