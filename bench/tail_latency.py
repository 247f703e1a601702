"""TailEvents: publish-to-delivered latency of live tails at a steady rate, and the catch-up rate over history.

What is measured, on real servers started in a temporary directory:

1. Live latency (embedded PostgreSQL with durable settings, as ingest_throughput.py; nats-server with
   JetStream file storage). `python -m audit_service.cli ingest` and `... serve` (AUDIT_AUTH_DISABLED=true)
   run as their own processes. For each --subscribers count (default 1, then 50) a child process (this
   script, `subscribers-child`) opens that many TailEvents streams, one gRPC channel each, starting "now"
   with a filter on the producer's tenant, and records time.time() as each response arrives, for every event
   in it. Once every stream has sent caught_up, this process publishes through the real client
   (`audit_client.connect(...).publish`) at --rate events/s, paced in ticks of 10 ms (the tick's events are
   each published from their own task, so slow acknowledgements do not hold up the pacing), recording
   time.time() just before each publish: 3 s of warm-up, then --seconds measured. Latency = received -
   publish started (same machine clock), over every (subscriber, measured event) pair; p50/p90/p99/max.
   Every subscriber must receive every published event of the phase (warm-up included) once, in position
   order: the check is printed, and a missing, repeated, foreign or out-of-order event is reported, never
   dropped. Also reported: the split at recorded_at (the database clock when the worker's append began),
   and CPU seconds of each process over the measured window (until all was delivered), from /proc.

2. Catch-up (a second PostgreSQL, fsync off for loading as query_latency.py): --history-events events loaded
   with query_latency.py's loader (rows sealed by the service's own code, COPYed). One stream tails from
   after_position=0 with a tenant-less filter through the API process until caught_up; events/s = events
   received / (caught_up - call start). Next to it, in the same run, the machine's own limit: the same
   events read directly with asyncpg, SELECT <all stored columns> ... WHERE position > $1 ORDER BY position
   LIMIT 1000, page after page, so the cost of the service (protobuf conversion, gRPC) is visible. Median of
   --runs.

Everything (producer, subscribers, worker, API, NATS, PostgreSQL) shares the machine's cores, so run it on an
otherwise idle machine. Figures are printed and written as JSON to bench/results/; nothing asserts on time.
Targets (informational): p99 <= 250 ms with 50 subscribers at 2k events/s; catch-up >= 20k events/s.

Usage: .venv/bin/python bench/tail_latency.py [--seconds 20] [--rate 2000] [--subscribers 1,50]
       [--history-events 1000000] [--runs 3]
Quick look: .venv/bin/python bench/tail_latency.py --seconds 5 --history-events 50000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import itertools
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import asyncpg
import audit_client
import grpc
import nats
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc, event_pb2
from audit_service.config import NatsConfig
from audit_service.core.records import columns_sql
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ingest_throughput import (
    Stack,
    Workers,
    _child_with_argument,
    _children,
    _cpu_seconds,
    _machine_busy_seconds,
    build_events,
    create_database,
    log_tail,
    percentile_ms,
    server_info,
    start_worker,
    stop_worker,
    wait_for_consumer,
)
from query_latency import load as load_history

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(__file__).resolve())
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHILD_COMMAND = "subscribers-child"

TENANT = "tail-bench"
"""The producer's tenant; every live subscriber filters on it."""
TICK_SECONDS = 0.01
WARMUP_SECONDS = 3.0
MAX_IN_FLIGHT = 2048
MAX_PENDING = 5000
"""Most publish tasks alive at once; the pacing waits (and counts a stall) beyond."""
READY_TIMEOUT_SECONDS = 60.0
DRAIN_TIMEOUT_SECONDS = 60.0
HEAD_POLL_SECONDS = 0.05
API_START_TIMEOUT_SECONDS = 60.0
WALL = "wall seconds"
"""In CPU samples: the monotonic clock (in a delta: the window's length)."""
SQL_PAGE = 1000
SQL_READ = f"SELECT {columns_sql()} FROM audit_events WHERE position > $1 ORDER BY position LIMIT {SQL_PAGE}"
"""The machine's limit for catch-up: every stored column, a page at a time, by position."""


# --- CPU accounting (from /proc, with ingest_throughput's helpers) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Meter:
    """CPU seconds (user + system) of named processes, of one PostgreSQL cluster and of the rest of the machine."""

    pids: dict[str, int]
    postmaster_pid: int

    def sample(self) -> dict[str, float]:
        ours = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        postgres = _cpu_seconds(self.postmaster_pid, reaped_children=True)
        ours["postgres (all backends)"] = postgres + sum(_cpu_seconds(p) for p in _children(self.postmaster_pid))
        return ours | {"other processes": _machine_busy_seconds() - sum(ours.values()), WALL: time.monotonic()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before}


def format_cpu(cpu: dict[str, float]) -> str:
    used = {name: seconds for name, seconds in cpu.items() if name != WALL}
    return (
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
        + f"; busy {sum(used.values()):.1f} in {cpu[WALL]:.1f} s x {os.cpu_count()} cores"
    )


def disturbance(cpu: dict[str, float]) -> str | None:
    """A warning when processes outside the benchmark took a noticeable share of the cores in a window."""
    other, wall = cpu["other processes"], cpu[WALL]
    if other > max(0.5, 0.1 * wall):
        return f"other processes took {other:.1f} CPU s in {wall:.1f} s: figures may be disturbed"
    return None


# --- the API process ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Api:
    process: subprocess.Popen[bytes]
    target: str
    log_path: Path


def spawn(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m audit_service.cli <command>`, logging to `log_path`."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "audit_service.cli", command],
            env=env,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


async def start_api(
    database_url: str,
    nats_url: str,
    nats_config: NatsConfig,
    log_path: Path,
    *,
    jwt_secret: str | None = None,
    http_port: int | None = None,
) -> Api:
    """`python -m audit_service.cli serve`; returns once its health check answers.

    Args:
        jwt_secret: verify bearer tokens signed with it (AUDIT_AUTH_JWT_SECRET); None: authentication off.
        http_port: also serve the HTTP port (Connect, gRPC-Web) on 127.0.0.1 at this port (AUDIT_HTTP_ADDRESS).
    """
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUDIT_")} | {
        "AUDIT_DATABASE_URL": database_url,
        "AUDIT_NATS_URL": nats_url,
        "AUDIT_SUBJECT_PREFIX": nats_config.subject_prefix,
        "AUDIT_STREAM_PREFIX": nats_config.stream_prefix,
        "AUDIT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "AUDIT_LOG_LEVEL": "WARNING",
    }
    env |= {"AUDIT_AUTH_DISABLED": "true"} if jwt_secret is None else {"AUDIT_AUTH_JWT_SECRET": jwt_secret}
    if http_port is not None:
        env["AUDIT_HTTP_ADDRESS"] = f"127.0.0.1:{http_port}"
    api = Api(spawn("serve", env, log_path), f"127.0.0.1:{port}", log_path)
    process = api.process
    async with grpc.aio.insecure_channel(api.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + API_START_TIMEOUT_SECONDS
        while True:
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return api
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline or process.poll() is not None:
                    stop_api(api)
                    raise RuntimeError(f"the API did not start: {' | '.join(log_tail(log_path))}") from None
                await asyncio.sleep(0.2)


def stop_api(api: Api) -> None:
    """SIGTERM, then waits; reports a non-zero exit status and anything logged beyond the start-up warning."""
    if api.process.poll() is None:
        api.process.terminate()
    try:
        api.process.wait(30)
    except subprocess.TimeoutExpired:
        print("  ! the API ignored SIGTERM for 30 s; killing it", flush=True)
        api.process.kill()
        api.process.wait()
    if api.process.returncode != 0:
        print(f"  ! the API exited with status {api.process.returncode}", flush=True)
    logged = [line for line in log_tail(api.log_path, 30) if "AUTHENTICATION IS DISABLED" not in line]
    if logged:
        print(f"  ! the API logged ({api.log_path}):\n    " + "\n    ".join(logged[-15:]), flush=True)


# --- the subscriber side (a child process) -----------------------------------------------------------------


@dataclass(slots=True)
class Subscriber:
    """What one TailEvents stream received: per event its position and the time its response arrived."""

    positions: array = field(default_factory=lambda: array("q"))
    received_at: array = field(default_factory=lambda: array("d"))
    responses: int = 0
    heartbeats: int = 0
    caught_up: int = 0
    """caught_up markers: 1 is expected; more means the stream fell behind its buffer and resynced."""
    checkpoint: int = 0
    checkpoint_regressions: int = 0
    error: str | None = None


async def subscribe(
    channel: grpc.aio.Channel,
    tenant: str,
    state: Subscriber,
    ids: dict[int, tuple[str, int]],
    ready: asyncio.Event,
    stopping: asyncio.Event,
) -> None:
    """Reads one stream with the raw stub (the client iterator would silently drop a repeated event)."""
    stub = audit_service_pb2_grpc.AuditServiceStub(channel)
    call = stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(tenant=tenant)))
    positions, received_at = state.positions, state.received_at
    try:
        while True:
            response = await call.read()
            now = time.time()
            if response is grpc.aio.EOF:
                state.error = "the stream ended"
                return
            state.responses += 1
            state.heartbeats += response.heartbeat
            if response.caught_up:
                state.caught_up += 1
                ready.set()
            for event in response.events:
                position = event.position
                positions.append(position)
                received_at.append(now)
                if position not in ids:
                    ids[position] = (event.event_id, event.recorded_at.ToMicroseconds())
            if response.checkpoint_position < state.checkpoint:
                state.checkpoint_regressions += 1
            state.checkpoint = max(state.checkpoint, response.checkpoint_position)
    except grpc.aio.AioRpcError as error:
        if not stopping.is_set():
            state.error = f"{error.code().name}: {error.details()}"
    finally:
        call.cancel()


async def run_subscribers(target: str, count: int, tenant: str) -> dict[str, Any]:
    """Protocol on stdin/stdout: prints `ready` once every stream is live; on `drain <position>` waits until
    every stream checkpointed it (at most DRAIN_TIMEOUT_SECONDS) and prints `drained <streams still short of
    it>`; on `exit` returns what was received."""
    ids: dict[int, tuple[str, int]] = {}
    states = [Subscriber() for _ in range(count)]
    readies = [asyncio.Event() for _ in range(count)]
    stopping = asyncio.Event()
    # One channel (own connection) per subscriber, as separate clients would have.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in states]
    tasks = [
        asyncio.create_task(subscribe(channel, tenant, state, ids, ready, stopping))
        for channel, state, ready in zip(channels, states, readies, strict=True)
    ]
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not all(ready.is_set() for ready in readies) and time.monotonic() < deadline:
            if any(state.error for state in states):
                break
            await asyncio.sleep(0.01)
        live = sum(ready.is_set() for ready in readies)
        errors = sorted({state.error for state in states if state.error})
        print("ready" if live == count else f"failed: {live} of {count} streams live; {errors}", flush=True)
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).split()
            if not command or command[0] == "exit":
                break
            if command[0] == "drain":
                position = int(command[1])
                deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
                for _ in itertools.count():  # until every stream has checkpointed `position` (or ended)
                    if all(s.checkpoint >= position or s.error for s in states) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.01)
                behind = sum(s.checkpoint < position and not s.error for s in states)
                print(f"drained {behind}", flush=True)
    finally:
        stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return {"subscribers": [{f.name: getattr(state, f.name) for f in fields(state)} for state in states], "ids": ids}


def child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"tail_latency.py {CHILD_COMMAND}")
    parser.add_argument("--target", required=True)
    parser.add_argument("--subscribers", type=int, required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    received = asyncio.run(run_subscribers(args.target, args.subscribers, args.tenant))
    args.out.write_bytes(pickle.dumps(received, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


class SubscriberProcess:
    """The parent's handle on the child process that holds the subscribers."""

    def __init__(self, process: asyncio.subprocess.Process, out: Path) -> None:
        self.process = process
        self.out = out

    @classmethod
    async def start(cls, target: str, count: int, out: Path) -> SubscriberProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            CHILD_COMMAND,
            "--target",
            target,
            "--subscribers",
            str(count),
            "--tenant",
            TENANT,
            "--out",
            str(out),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        child = cls(process, out)
        line = await child.reply(READY_TIMEOUT_SECONDS + 30)
        if line != "ready":
            await child.finish()
            raise RuntimeError(f"the subscribers did not go live: {line or 'the child exited'}")
        return child

    async def reply(self, within_seconds: float) -> str:
        assert self.process.stdout is not None
        return (await asyncio.wait_for(self.process.stdout.readline(), within_seconds)).decode().strip()

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()

    async def drain(self, position: int) -> int:
        """Waits until every stream has checkpointed `position`; returns how many did not within the timeout."""
        await self.send(f"drain {position}")
        answer = (await self.reply(DRAIN_TIMEOUT_SECONDS + 30)).split()
        if answer[:1] != ["drained"]:
            raise RuntimeError("the subscriber process did not answer `drain`")
        return int(answer[1])

    async def finish(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):
            await self.send("exit")
        try:
            await asyncio.wait_for(self.process.wait(), 120)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise RuntimeError("the subscriber process did not exit") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"the subscriber process exited with status {self.process.returncode}")
        return pickle.loads(self.out.read_bytes())


# --- live latency ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Publishing:
    sent: dict[str, float]
    """event_id -> time.time() just before its publish, for every event of the phase (warm-up included)."""
    measured: set[str]
    failures: int = 0
    stalls: int = 0
    max_tick_lag_ms: float = 0.0
    achieved_rate: float = 0.0


async def publish_paced(
    publisher: audit_client.Publisher, events: Sequence[event_pb2.AuditEvent], warmup: int, rate: float, meter: Meter
) -> tuple[Publishing, dict[str, float]]:
    """Publishes `events` at `rate` in ticks of TICK_SECONDS; returns what was sent and the CPU sample taken when
    the measured window (the events after the first `warmup`) began."""
    result = Publishing(sent={}, measured={event.event_id for event in events[warmup:]})
    pending: set[asyncio.Task[None]] = set()
    cpu_before: dict[str, float] = {}

    async def publish_one(event: event_pb2.AuditEvent) -> None:
        result.sent[event.event_id] = time.time()
        try:
            await publisher.publish(event)
        except audit_client.PublishError as error:
            result.failures += 1
            if result.failures <= 3:
                print(f"  ! publish failed: {error}", flush=True)

    per_tick = rate * TICK_SECONDS
    started = time.monotonic() + 0.05
    index = 0
    for tick in itertools.count():
        if index >= len(events):
            break
        scheduled = started + tick * TICK_SECONDS
        if (delay := scheduled - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        result.max_tick_lag_ms = max(result.max_tick_lag_ms, (time.monotonic() - scheduled) * 1000)
        due = min(len(events), round((tick + 1) * per_tick))
        while index < due:
            if index == warmup:
                cpu_before = meter.sample()
            if len(pending) >= MAX_PENDING:
                result.stalls += 1
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(publish_one(events[index]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
    if pending:
        await asyncio.wait(pending)
    measured_times = sorted(t for event_id, t in result.sent.items() if event_id in result.measured)
    if len(measured_times) > 1:
        result.achieved_rate = round((len(measured_times) - 1) / (measured_times[-1] - measured_times[0]), 1)
    return result, cpu_before


async def wait_for_head(conn: asyncpg.Connection, target: int, processes: Sequence[subprocess.Popen[bytes]]) -> int:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while True:
        position = await conn.fetchval("SELECT last_position FROM audit_log_head")
        if position >= target:
            return position
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the log holds position {position}, not {target}, {DRAIN_TIMEOUT_SECONDS:.0f} s on")
        await asyncio.sleep(HEAD_POLL_SECONDS)


def latency_figures(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "p50_ms": percentile_ms(values, 0.50),
        "p90_ms": percentile_ms(values, 0.90),
        "p99_ms": percentile_ms(values, 0.99),
        "max_ms": round(max(values) * 1000, 2),
    }


def analyse(received: dict[str, Any], publishing: Publishing) -> dict[str, Any]:
    """Delivery checks per subscriber, and latencies over every (subscriber, measured event) pair."""
    ids: dict[int, tuple[str, int]] = received["ids"]
    sent, measured = publishing.sent, publishing.measured
    published = set(sent)
    latencies: list[float] = []
    after_recorded: list[float] = []
    per_subscriber_p99: list[float] = []
    checks = []
    for state in received["subscribers"]:
        positions = state["positions"]
        event_ids = [ids[position][0] for position in positions]
        distinct = set(event_ids)
        own: list[float] = []
        for position, event_id, at in zip(positions, event_ids, state["received_at"], strict=True):
            if event_id in measured:
                own.append(at - sent[event_id])
                after_recorded.append(at - ids[position][1] / 1e6)
        latencies += own
        if own:
            per_subscriber_p99.append(percentile_ms(own, 0.99))
        checks.append(
            {
                "delivered": len(positions),
                "delivered_measured": len(own),
                "missing": len(published - distinct),
                "repeated": len(positions) - len(set(positions)),
                "foreign": len(distinct - published),
                "out_of_order": sum(b <= a for a, b in itertools.pairwise(positions)),
                "caught_up_markers": state["caught_up"],
                "heartbeats": state["heartbeats"],
                "responses": state["responses"],
                "checkpoint_regressions": state["checkpoint_regressions"],
                "error": state["error"],
            }
        )
    to_recorded = [ids_at / 1e6 - sent[event_id] for event_id, ids_at in ids.values() if event_id in measured]
    problems = {
        name: sum(check[name] for check in checks)
        for name in ("missing", "repeated", "foreign", "out_of_order", "checkpoint_regressions")
    }
    problems["resyncs"] = sum(check["caught_up_markers"] - 1 for check in checks)
    problems["stream_errors"] = sum(check["error"] is not None for check in checks)
    delivered = [check["delivered"] for check in checks]
    return {
        "published": len(published),
        "published_measured": len(measured),
        "delivered_per_subscriber_min": min(delivered, default=0),
        "delivered_per_subscriber_max": max(delivered, default=0),
        "delivery_ok": all(v == 0 for k, v in problems.items() if k != "resyncs")
        and all(d == len(published) for d in delivered),
        "problems": problems,
        "errors": sorted({check["error"] for check in checks if check["error"]}),
        "latency": latency_figures(latencies),
        "pairs": len(latencies),
        "publish_to_recorded_at": latency_figures(to_recorded),
        "recorded_at_to_received": latency_figures(after_recorded),
        "per_subscriber_p99_ms": [min(per_subscriber_p99, default=0.0), max(per_subscriber_p99, default=0.0)],
    }


@dataclass(slots=True)
class LiveStack:
    stack: Stack
    nats_config: NatsConfig
    owner_url: str
    worker: Workers
    worker_log: Path
    api: Api
    head: int = 0
    """The log's last position after the previous phase."""


async def live_phase(live: LiveStack, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
    warmup = round(rate * WARMUP_SECONDS)
    measured = max(1, round(rate * seconds))
    print(
        f"live: {subscribers} subscriber(s), {rate:,.0f} events/s, {WARMUP_SECONDS:g} s warm-up + {seconds:g} s ...",
        flush=True,
    )
    events = build_events(warmup + measured, seed=subscribers)
    for event in events:
        event.tenant = TENANT
    gc.collect()
    gc.freeze()  # the harness's own events: keep the collector from rescanning them while publishing
    out = live.stack.workdir / f"subscribers-{subscribers}.pickle"
    child = await SubscriberProcess.start(live.api.target, subscribers, out)
    try:
        meter = Meter(
            {
                "producer (this process)": os.getpid(),
                f"subscribers (child, {subscribers} stream(s))": child.process.pid,
                "api (serve)": live.api.process.pid,
                "ingest worker": live.worker.pids[0],
                "nats-server": live.stack.nats_pid,
            },
            live.stack.postmaster_pid,
        )
        head_conn = await asyncpg.connect(live.owner_url)
        try:
            async with audit_client.connect(
                live.stack.nats.url, subject_prefix=live.nats_config.events_subject_prefix, max_in_flight=MAX_IN_FLIGHT
            ) as publisher:
                publishing, cpu_before = await publish_paced(publisher, events, warmup, rate, meter)
            stored = len(events) - publishing.failures
            head = await wait_for_head(head_conn, live.head + stored, [live.api.process, *live.worker.processes])
        finally:
            await head_conn.close()
        stalled = await child.drain(head)
        cpu_after = meter.sample()
    finally:
        received = await child.finish()
        gc.unfreeze()
    live.head = head
    del events
    figures = analyse(received, publishing)
    figures["problems"]["stalled_streams"] = stalled
    figures["delivery_ok"] = figures["delivery_ok"] and not stalled
    cpu = cpu_delta(cpu_before, cpu_after)
    latency = figures["latency"]
    print(f"  delivered per subscriber {delivered_text(figures)}: {check_text(figures)}", flush=True)
    print(
        f"  p50 {latency['p50_ms']:.1f}  p90 {latency['p90_ms']:.1f}  p99 {latency['p99_ms']:.1f}  "
        f"max {latency['max_ms']:.1f} ms over {figures['pairs']:,} (subscriber, event) pairs; "
        f"achieved {publishing.achieved_rate:,.0f} events/s (pacing: a tick at most {publishing.max_tick_lag_ms:.0f} "
        f"ms late, {publishing.stalls} stalls; failed publishes {publishing.failures})",
        flush=True,
    )
    print(f"  CPU seconds: {format_cpu(cpu)}", flush=True)
    if warning := disturbance(cpu):
        print(f"  ! {warning}", flush=True)
    return {
        "subscribers": subscribers,
        "rate": rate,
        "seconds": seconds,
        "warmup_seconds": WARMUP_SECONDS,
        "achieved_rate": publishing.achieved_rate,
        "publish_failures": publishing.failures,
        "pacing_stalls": publishing.stalls,
        "max_tick_lag_ms": round(publishing.max_tick_lag_ms, 2),
        **figures,
        "cpu_seconds": cpu,
        "disturbed": disturbance(cpu),
    }


def delivered_text(figures: dict[str, Any]) -> str:
    low, high = figures["delivered_per_subscriber_min"], figures["delivered_per_subscriber_max"]
    return f"{low:,}" + (f"..{high:,}" if high != low else "") + f" of {figures['published']:,}"


def check_text(figures: dict[str, Any]) -> str:
    problems = {name: count for name, count in figures["problems"].items() if count}
    text = "OK" if figures["delivery_ok"] else "MISMATCH"
    if problems:
        text += " (" + ", ".join(f"{name} {count:,}" for name, count in problems.items()) + ")"
    if figures["errors"]:
        text += "; stream errors: " + "; ".join(figures["errors"])
    return text


async def live_benchmark(args: argparse.Namespace, stack: Stack) -> list[dict[str, Any]]:
    nats_config = NatsConfig(subject_prefix="benchtail", stream_prefix="BENCHTAIL")
    owner_url = await create_database(stack.postgres, "tail_live", app_role=True)
    worker_log = stack.workdir / "worker.log"
    worker = start_worker(stack, "tail_live", nats_config, worker_log)
    try:
        nc = await nats.connect(stack.nats.url, name="bench-admin")
        try:
            await wait_for_consumer(nc.jetstream(), nats_config.events_stream, worker, worker_log)
        finally:
            await nc.close()
        app_url = stack.postgres.url("tail_live", user=APP_ROLE)
        api = await start_api(app_url, stack.nats.url, nats_config, stack.workdir / "api-live.log")
        try:
            live = LiveStack(stack, nats_config, owner_url, worker, worker_log, api)
            return [await live_phase(live, count, args.rate, args.seconds) for count in args.subscribers]
        finally:
            await asyncio.to_thread(stop_api, api)
    finally:
        await asyncio.to_thread(stop_worker, worker, worker_log)


# --- catch-up ---------------------------------------------------------------------------------------------


async def catch_up_via_api(target: str, events: int, meter: Meter) -> dict[str, Any]:
    """One stream from after_position=0, no tenant, until caught_up; every position must come once, in order."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        cpu_before = meter.sample()
        started = time.perf_counter()
        call = stub.TailEvents(pb.TailEventsRequest(filter=pb.EventFilter(), after_position=0))
        received = responses = repeated = skipped = 0
        last = 0
        first_event_s: float | None = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise RuntimeError(f"the stream ended before caught_up, after {received:,} events")
                responses += 1
                if response.events and first_event_s is None:
                    first_event_s = time.perf_counter() - started
                for position in [event.position for event in response.events]:
                    if position <= last:
                        repeated += 1
                        continue
                    skipped += position - last - 1
                    last = position
                    received += 1
                if response.caught_up:
                    elapsed = time.perf_counter() - started
                    break
        finally:
            call.cancel()
        cpu = cpu_delta(cpu_before, meter.sample())
    skipped += events - last
    return {
        "events": received,
        "seconds": round(elapsed, 3),
        "events_per_second": round(received / elapsed, 1),
        "first_event_seconds": round(first_event_s or 0.0, 3),
        "responses": responses,
        "missing": skipped,
        "repeated": repeated,
        "cpu_seconds": cpu,
        "disturbed": disturbance(cpu),
    }


async def catch_up_via_sql(url: str, events: int, meter: Meter) -> dict[str, Any]:
    """The same events read directly, SQL_PAGE at a time by position (asyncpg, every stored column)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.fetch(SQL_READ, events)  # prepares the statement outside the timing
        cpu_before = meter.sample()
        started = time.perf_counter()
        after = received = 0
        while True:
            rows = await conn.fetch(SQL_READ, after)
            if not rows:
                break
            received += len(rows)
            after = rows[-1]["position"]
            if len(rows) < SQL_PAGE:
                break
        elapsed = time.perf_counter() - started
        cpu = cpu_delta(cpu_before, meter.sample())
    finally:
        await conn.close()
    if received != events:
        raise RuntimeError(f"the direct read found {received:,} events, not {events:,}")
    return {
        "events": received,
        "seconds": round(elapsed, 3),
        "events_per_second": round(received / elapsed, 1),
        "cpu_seconds": cpu,
        "disturbed": disturbance(cpu),
    }


async def catch_up_benchmark(args: argparse.Namespace, stack: Stack, postgres: EmbeddedPostgres) -> dict[str, Any]:
    postgres.start()
    try:
        postmaster = _child_with_argument(str(postgres.data_dir))
        owner_url = await create_database(postgres, "tail_history", app_role=True)
        print(f"catch-up: loading {args.history_events:,} events ...", flush=True)
        started = time.perf_counter()
        data = await load_history(owner_url, args.history_events, seed=1)
        print(f"  loaded in {time.perf_counter() - started:.0f} s; log + indexes: {data['size']}", flush=True)
        app_url = postgres.url("tail_history", user=APP_ROLE)
        nats_config = NatsConfig(subject_prefix="benchhist", stream_prefix="BENCHHIST")
        api = await start_api(app_url, stack.nats.url, nats_config, stack.workdir / "api-history.log")
        runs = []
        try:
            for run in range(1, args.runs + 1):
                api_meter = Meter(
                    {
                        "client (this process)": os.getpid(),
                        "api (serve)": api.process.pid,
                        "nats-server": stack.nats_pid,
                    },
                    postmaster,
                )
                via_api = await catch_up_via_api(api.target, args.history_events, api_meter)
                sql_meter = Meter({"asyncpg reader (this process)": os.getpid()}, postmaster)
                via_sql = await catch_up_via_sql(app_url, args.history_events, sql_meter)
                ratio = via_api["events_per_second"] / via_sql["events_per_second"]
                runs.append({"run": run, "api": via_api, "sql": via_sql, "ratio_api_to_sql": round(ratio, 3)})
                check = "OK" if via_api["missing"] == via_api["repeated"] == 0 else "MISMATCH"
                print(
                    f"  run {run}: API {via_api['events_per_second']:,.0f} events/s ({via_api['events']:,} events in "
                    f"{via_api['seconds']:.1f} s, first after {via_api['first_event_seconds'] * 1000:.0f} ms; "
                    f"missing {via_api['missing']:,}, repeated {via_api['repeated']:,}: {check}); "
                    f"direct SQL {via_sql['events_per_second']:,.0f} events/s; API / SQL {ratio:.3f}",
                    flush=True,
                )
                print(f"    CPU seconds, API:        {format_cpu(via_api['cpu_seconds'])}", flush=True)
                print(f"    CPU seconds, direct SQL: {format_cpu(via_sql['cpu_seconds'])}", flush=True)
                for warning in {via_api["disturbed"], via_sql["disturbed"]} - {None}:
                    print(f"    ! {warning}", flush=True)
        finally:
            await asyncio.to_thread(stop_api, api)
        settings = {}
        conn = await asyncpg.connect(owner_url)
        try:
            for name in ("fsync", "shared_buffers"):
                settings[name] = await conn.fetchval(f"SHOW {name}")
        finally:
            await conn.close()
    finally:
        postgres.stop()
    return {
        "events": args.history_events,
        "log_size": data["size"],
        "postgres": settings,
        "runs": runs,
        "median_api_events_per_second": statistics.median(r["api"]["events_per_second"] for r in runs),
        "median_sql_events_per_second": statistics.median(r["sql"]["events_per_second"] for r in runs),
        "median_ratio_api_to_sql": statistics.median(r["ratio_api_to_sql"] for r in runs),
        "delivery_ok": all(r["api"]["missing"] == r["api"]["repeated"] == 0 for r in runs),
    }


# --- report -------------------------------------------------------------------------------------------------


def targets(live: list[dict[str, Any]], catch_up: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    fifty = [phase for phase in live if phase["subscribers"] == 50]
    if fifty:
        p99 = fifty[0]["latency"]["p99_ms"]
        rate = fifty[0]["rate"]
        name = f"p99 <= 250 ms with 50 subscribers at 2k events/s (run at {rate:,.0f}/s)"
        found[name] = {"value": f"p99 {p99:.1f} ms", "met": p99 <= 250}
    if catch_up is not None:
        rate = catch_up["median_api_events_per_second"]
        found["catch-up >= 20k events/s"] = {"value": f"{rate:,.0f} events/s", "met": rate >= 20_000}
    return found


def summary_lines(summary: dict[str, Any]) -> list[str]:
    machine, servers = summary["machine"], summary["servers"]
    lines = [
        "=" * 110,
        "tail_latency summary",
        f"machine    {machine['platform']}; os.cpu_count()={machine['cpu_count']}; python {machine['python']}",
        f"servers    PostgreSQL {servers['postgres_server_version']} (live: fsync={servers['postgres_fsync']}, "
        f"synchronous_commit={servers['postgres_synchronous_commit']}, "
        f"shared_buffers={servers['postgres_shared_buffers']}); {servers['nats_server']}",
    ]
    live = summary["live"]
    if live:
        first = live[0]
        lines += [
            f"live       {first['rate']:,.0f} events/s of tenant {TENANT!r} for {first['seconds']:g} s (after "
            f"{first['warmup_seconds']:g} s warm-up); 1 ingest worker, 1 API process, subscribers in 1 child process",
            "           latency = received by a subscriber - publish started, over all (subscriber, measured event)",
            f"  {'subs':>4}  {'delivered/subscriber':>22}  {'check':<9} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} ms"
            f"  {'rate':>6}  {'sub p99 range':>15}  {'pub->rec p50/p99':>17}  {'rec->recv p50/p99':>17}",
        ]
        for phase in live:
            latency, to_rec, after_rec = (
                phase["latency"],
                phase["publish_to_recorded_at"],
                phase["recorded_at_to_received"],
            )
            low, high = phase["per_subscriber_p99_ms"]
            lines.append(
                f"  {phase['subscribers']:>4}  {delivered_text(phase):>22}  "
                f"{'OK' if phase['delivery_ok'] else 'MISMATCH':<9} {latency['p50_ms']:7.1f} {latency['p90_ms']:7.1f} "
                f"{latency['p99_ms']:7.1f} {latency['max_ms']:7.1f}     {phase['achieved_rate']:>6,.0f}  "
                f"{low:>6.1f}..{high:<7.1f}  {to_rec['p50_ms']:>7.1f}/{to_rec['p99_ms']:<8.1f}  "
                f"{after_rec['p50_ms']:>7.1f}/{after_rec['p99_ms']:<8.1f}"
            )
        for phase in live:
            if not phase["delivery_ok"] or any(phase["problems"].values()):
                lines.append(f"  ! {phase['subscribers']} subscriber(s): {check_text(phase)}")
            if phase["disturbed"]:
                lines.append(f"  ! {phase['subscribers']} subscriber(s): {phase['disturbed']}")
            if phase["publish_failures"] or phase["pacing_stalls"]:
                lines.append(
                    f"  ! {phase['subscribers']} subscriber(s): publish failures {phase['publish_failures']}, "
                    f"pacing stalls {phase['pacing_stalls']}"
                )
        for phase in live:
            lines.append(
                f"  CPU s, {phase['subscribers']:>3} sub(s), measured window: {format_cpu(phase['cpu_seconds'])}"
            )
        lines.append(
            "  (pub->rec: publish started -> recorded_at, the database clock when the worker's append began; "
            "rec->recv: recorded_at -> received)"
        )
    catch_up = summary["catch_up"]
    if catch_up:
        runs = catch_up["runs"]
        lines += [
            f"catch-up   {catch_up['events']:,} events ({catch_up['log_size']}; PostgreSQL fsync="
            f"{catch_up['postgres']['fsync']}, shared_buffers={catch_up['postgres']['shared_buffers']}), "
            f"one stream from after_position=0, no tenant filter, until caught_up; {len(runs)} run(s)",
            f"  API TailEvents   median {catch_up['median_api_events_per_second']:>10,.0f} events/s   runs: "
            + ", ".join(f"{r['api']['events_per_second']:,.0f}" for r in runs)
            + f"   delivery {'OK' if catch_up['delivery_ok'] else 'MISMATCH'}",
            f"  direct SQL       median {catch_up['median_sql_events_per_second']:>10,.0f} events/s   runs: "
            + ", ".join(f"{r['sql']['events_per_second']:,.0f}" for r in runs)
            + f"   (asyncpg, pages of {SQL_PAGE} by position, every stored column)",
            f"  API / SQL        median {catch_up['median_ratio_api_to_sql']:>10.3f}",
        ]
        for r in runs:
            lines.append(f"  CPU s, run {r['run']}, API: {format_cpu(r['api']['cpu_seconds'])}")
            lines.append(f"  CPU s, run {r['run']}, SQL: {format_cpu(r['sql']['cpu_seconds'])}")
            for side in ("api", "sql"):
                if r[side]["disturbed"]:
                    lines.append(f"  ! run {r['run']}, {side.upper()}: {r[side]['disturbed']}")
    lines.append(
        "targets    "
        + "; ".join(
            f"{name}: {goal['value']}, {'met' if goal['met'] else 'NOT met'}"
            for name, goal in summary["targets"].items()
        )
        + "  (informational)"
    )
    lines.append("=" * 110)
    return [line.rstrip() for line in lines]


def write_results(summary: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"tail_latency-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


# --- main ---------------------------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace, stack: Stack, history_postgres: EmbeddedPostgres) -> dict[str, Any]:
    servers = await server_info(stack.postgres)
    live = await live_benchmark(args, stack) if args.seconds > 0 and args.subscribers else []
    catch_up = await catch_up_benchmark(args, stack, history_postgres) if args.history_events > 0 else None
    return {
        "benchmark": "tail_latency",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "servers": servers,
        "live": live,
        "catch_up": catch_up,
        "targets": targets(live, catch_up),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per live phase, 0 to skip")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second published (default 2000)")
    parser.add_argument("--subscribers", default="1,50", help="live subscriber counts, one phase each (default 1,50)")
    parser.add_argument(
        "--history-events", type=int, default=1_000_000, help="events in the catch-up log (default 1000000), 0 to skip"
    )
    parser.add_argument("--runs", type=int, default=3, help="catch-up runs (default 3)")
    args = parser.parse_args(argv)
    try:
        args.subscribers = [int(v) for v in args.subscribers.split(",") if v.strip()]
    except ValueError:
        parser.error("--subscribers takes comma-separated counts, e.g. 1,50")
    if args.rate <= 0 or args.seconds < 0 or args.runs < 1 or args.history_events < 0:
        parser.error("--rate must be positive, --runs at least 1, --seconds and --history-events not negative")
    if any(count < 1 for count in args.subscribers):
        parser.error("--subscribers counts must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [CHILD_COMMAND]:
        return child_main(argv[1:])
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"audit-tail-bench-{uuid.uuid4().hex[:6]}-"))
    stack = Stack(
        workdir=workdir,
        postgres=EmbeddedPostgres(workdir / "pg-live", port=free_port(), durable=True),
        nats=NatsServer(workdir / "nats", port=free_port()),
    )
    history_postgres = EmbeddedPostgres(workdir / "pg-history", port=free_port(), durable=False)
    try:
        stack.start()
        print(f"servers up in {workdir}: PostgreSQL :{stack.postgres.port}, NATS :{stack.nats.port}", flush=True)
        summary = asyncio.run(benchmark(args, stack, history_postgres))
    finally:
        history_postgres.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary_lines(summary)))
    print(f"results written to {write_results(summary).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
