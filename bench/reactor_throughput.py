"""The reactor process (`audit-service react`): alert evaluation, webhook latency, forwarding and catch-up, each
against a limit of the machine measured in the same run.

Real servers in a temporary directory, as bench/ingest_throughput.py starts them (embedded PostgreSQL with durable
settings, nats-server with JetStream file storage), whose helpers this script imports. The ingest worker and the
reactor run as their own processes (`python -m audit_service.cli ingest` / `react`), with the production defaults
of every AUDIT_REACTOR_* and AUDIT_DELIVERY_* setting (printed), AUDIT_DESTINATIONS_ALLOW_PRIVATE=true (the
receivers are on loopback). Phases (--phases, default all):

1. reactor: evaluation throughput. 50 rules of one tenant (40 without a threshold, each on one action and the
   outcomes failure/denied; 10 with a threshold of 5 within 60 s grouped by actor.id, each on one "<kind>.delete"
   action), created before the backlog. N events of ingest_throughput's realistic shape, all of that tenant (every
   event is evaluated against all 50 rules: the worst case for a tenant with 50 rules), are published with no
   worker running, then drained by the worker (the ingest rate, timed from the first poll that sees events in the
   log to the one that sees all N); the worker is stopped and a reactor started on that log, timed from the first
   poll of its checkpoint past the rules to the one at the head. Printed: both rates and reactor / ingest.
   Median over --runs.
2. webhook: publish -> alert at a webhook. The worker and the reactor run; a rule without a threshold matches
   1 in 20 events (action alert.probe; message template "{message}", the event's message naming its index) and
   names a webhook destination pointing at an aiohttp receiver in this process, which records time.time() as each
   request has been read. Events are published through the client at --rate for --seconds after 3 s of warm-up,
   each in its own task, time.time() recorded just before each publish. Latency = arrival - publish:
   p50/p90/p99/max and the count; split (from the database) at the event's recorded_at and the alert's
   created_at.
3. forward: forwarding throughput from a backlog. N events of one tenant COPYed into the migrated schema as the
   service would have stored them (positions, hash chains, event ids, heads: ingest_throughput.build_log_rows);
   the reactor (no rules) first catches up on the log, then per variant a destination is created and replayed
   from position 0, and timed from the first poll that sees its checkpoint move to the one at the head:
   http with batches of 100 and 1000, syslog over TLS to a real rsyslog (tests/syslog_daemon.py) with batches
   of 100 and 1000 (timed until rsyslog has written every message). The limit, in the same run: the same
   receiver fed the same batches' bodies, pre-built, by the service's HttpSender in a loop; and the same syslog
   frames, pre-built, written over one raw TLS connection until rsyslog has written them all.
4. catchup: a destination replayed from position 0 over --catchup-events (default 1M) events loaded as in 3:
   http, default batch (100), events/s and total time (replay committed -> checkpoint at the head). Next to it,
   the destination's own SQL alone (store.queries.list_events with its filter, page after page, no sending and
   no conversion), so the cost of conversion and delivery shows.

CPU seconds of each process over each timed window, from /proc (other processes on the machine included: a
window where they took more than 10% of a core is flagged). Figures are printed and written as JSON to
bench/results/; nothing is asserted on time.

Usage: .venv/bin/python bench/reactor_throughput.py [--quick] [--phases reactor,webhook,forward,catchup]
       [--events 200000] [--runs 3] [--rate 1000] [--seconds 20] [--catchup-events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import audit_client
import nats
import orjson
from aiohttp import web
from audit.v1 import alert_rules_pb2 as rpb
from audit.v1 import audit_service_pb2 as apb
from audit.v1 import destinations_pb2 as dpb
from audit.v1 import event_pb2
from audit_service.config import DeliveryConfig, NatsConfig, ReactorConfig
from audit_service.core.delivery_formats import http_batch_body, octet_counted, syslog_message
from audit_service.core.destination_urls import AddressPolicy
from audit_service.core.destinations import DEFAULT_APP_NAME, DEFAULT_BATCH_EVENTS, DEFAULT_FACILITY
from audit_service.core.event_filter import Scope, compile_filter
from audit_service.core.records import STORED_COLUMNS
from audit_service.core.stored_event import row_to_event
from audit_service.delivery.destinations import HOSTNAME, PAGE_BYTES
from audit_service.delivery.http_sender import HttpSender
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.devstack.stack import APP_ROLE
from audit_service.store.alert_rules import create_rule
from audit_service.store.append import LogAppender
from audit_service.store.config_changes import Actor
from audit_service.store.destinations import create_destination, replay_destination, set_paused
from audit_service.store.pool import create_pool
from audit_service.store.queries import PageQuery, list_events, read_range
from google.protobuf.duration_pb2 import Duration

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ingest_throughput import (
    MAX_IN_FLIGHT,
    RESULTS_DIR,
    Stack,
    _children,
    _cpu_seconds,
    _machine_busy_seconds,
    build_events,
    build_log_rows,
    checkpoint,
    create_database,
    log_tail,
    percentile_ms,
    publish_all,
    server_info,
    start_worker,
    stop_processes,
    stop_worker,
    wait_for_consumer,
)

from tests.syslog_daemon import RsyslogDaemon

REPO_ROOT = Path(__file__).resolve().parent.parent
TENANT = "tenant-00"
ADMIN = Actor("u-bench")
SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWtleS1vZi0zMi1ieXRlcy0hISE="
POLL_SECONDS = 0.05
TIMEOUT_SECONDS = 1800.0
LOAD_CHUNK = 50_000
PROBE_EVERY = 20
WARMUP_SECONDS = 3.0


# --- processes and CPU --------------------------------------------------------------------------------------


class Meter:
    """CPU seconds (user + system) per process of the benchmark over a window, from /proc."""

    def __init__(self, stack: Stack, processes: dict[str, int]) -> None:
        self._stack = stack
        self._processes = processes

    def sample(self) -> dict[str, float]:
        postgres = _cpu_seconds(self._stack.postmaster_pid, reaped_children=True)
        postgres += sum(_cpu_seconds(pid) for pid in _children(self._stack.postmaster_pid))
        ours = {"benchmark": _cpu_seconds(os.getpid())}
        ours |= {name: _cpu_seconds(pid) for name, pid in self._processes.items()}
        ours |= {"nats-server": _cpu_seconds(self._stack.nats_pid), "postgres": postgres}
        return ours | {"other processes": _machine_busy_seconds() - sum(ours.values())}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before}


def format_cpu(cpu: dict[str, float]) -> str:
    text = ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items())
    return f"{text}; machine busy {sum(cpu.values()):.1f}"


def disturbed(cpu: dict[str, float], seconds: float) -> bool:
    return seconds > 0 and cpu.get("other processes", 0.0) > 0.1 * seconds


def service_env(stack: Stack, database: str, nats_config: NatsConfig) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUDIT_")}
    env.update(
        {
            "AUDIT_DATABASE_URL": stack.postgres.url(database, user=APP_ROLE),
            "AUDIT_NATS_URL": stack.nats.url,
            "AUDIT_SUBJECT_PREFIX": nats_config.subject_prefix,
            "AUDIT_STREAM_PREFIX": nats_config.stream_prefix,
            "AUDIT_LOG_LEVEL": "WARNING",
            "AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true",
        }
    )
    return env


def start_reactor(stack: Stack, database: str, nats_config: NatsConfig, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "audit_service.cli", "react"],
            env=service_env(stack, database, nats_config),
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop_reactor(process: subprocess.Popen[bytes], log_path: Path) -> None:
    stop_processes((process,), log_path, "reactor")


def delivery_settings() -> dict[str, Any]:
    """The settings in play, all production defaults (nothing below is set in the processes' environment)."""
    delivery, reactor = DeliveryConfig(), ReactorConfig()
    return {
        "AUDIT_DELIVERY_POLL_SECONDS": delivery.poll_seconds,
        "AUDIT_REACTOR_PAGE_EVENTS": reactor.page_events,
        "AUDIT_REACTOR_PUBLISH_PAGE_ALERTS": reactor.publish_page_alerts,
        "reactor poll when caught up (store/reactor.react, fixed)": 0.2,
        "AUDIT_DELIVERY_TIMEOUT_SECONDS": delivery.request_timeout_seconds,
        "AUDIT_WEBHOOK_MAX_ATTEMPTS": delivery.webhook_max_attempts,
        "destination batch (max_batch_events unset)": DEFAULT_BATCH_EVENTS,
    }


async def poll_until(
    conn: asyncpg.Connection,
    sql: str,
    args: Sequence[Any],
    target: int,
    processes: Sequence[subprocess.Popen[bytes]],
    meter: Meter,
    *,
    moved_from: int = 0,
) -> dict[str, Any]:
    """Polls `sql` (one integer) every POLL_SECONDS until it reaches `target`. Timed from the first poll that sees
    it past `moved_from` to the one at `target`; returns the rate over that stretch and the CPU over it."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    first: tuple[float, int, dict[str, float]] | None = None
    started = time.perf_counter()
    while True:
        value = await conn.fetchval(sql, *args) or 0
        now = time.perf_counter()
        if first is None and value > moved_from:
            first = (now, value, meter.sample())
        if value >= target:
            break
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sql} is at {value} of {target} after {TIMEOUT_SECONDS:.0f} s")
        await asyncio.sleep(POLL_SECONDS)
    cpu_after = meter.sample()
    assert first is not None
    t_first, first_value, cpu_before = first
    if first_value >= target:
        raise RuntimeError(f"{sql} reached {target} before the first poll: use more events")
    seconds = now - t_first
    cpu = cpu_delta(cpu_before, cpu_after)
    return {
        "seconds": round(seconds, 3),
        "items": target - first_value,
        "per_second": round((target - first_value) / seconds, 1),
        "total_seconds": round(now - started, 3),
        "cpu_seconds": cpu,
        "disturbed": disturbed(cpu, seconds),
        "t_first": t_first,
    }


# --- phase 1: reactor throughput ------------------------------------------------------------------------------

_HEAD = "SELECT last_position FROM audit_log_head"
_REACTOR_AT = "SELECT position FROM reactor_checkpoints WHERE subscription = 'alerts'"
_DESTINATION_AT = "SELECT checkpoint FROM destination_state WHERE tenant = $1 AND name = $2"


def bench_rules(events: Sequence[event_pb2.AuditEvent]) -> list[rpb.AlertRule]:
    """40 rules without a threshold (one action each, failures and denials) and 10 with one (5 "<kind>.delete"
    within 60 s per actor.id), over actions the events use."""
    actions = sorted({event.action for event in events[:20_000]})
    deletes = [action for action in actions if action.endswith(".delete")][:10]
    others = [action for action in actions if not action.endswith(".delete")][:40]
    rules = [
        rpb.AlertRule(
            tenant=TENANT,
            display_name=f"{action} failed",
            enabled=True,
            filter=apb.EventFilter(actions=[action], outcomes=[event_pb2.OUTCOME_FAILURE, event_pb2.OUTCOME_DENIED]),
            severity=rpb.ALERT_SEVERITY_MEDIUM,
            message_template="{actor.id} failed {rule.display_name}",
        )
        for action in others
    ]
    rules += [
        rpb.AlertRule(
            tenant=TENANT,
            display_name=f"many {action}",
            enabled=True,
            query=f"action:{action}",
            threshold=rpb.AlertThreshold(count=5, window=Duration(seconds=60), group_by="actor.id"),
            severity=rpb.ALERT_SEVERITY_HIGH,
            message_template="{actor.id} ran {count} {rule.display_name} in {window}",
        )
        for action in deletes
    ]
    return rules


def of_tenant(events: Sequence[event_pb2.AuditEvent]) -> None:
    for event in events:
        event.tenant = TENANT


async def reactor_run(stack: Stack, nc: nats.NATS, run: int, events: Sequence[event_pb2.AuditEvent]) -> dict[str, Any]:
    database = f"react_{run}"
    url = await create_database(stack.postgres, database, app_role=True)
    nats_config = NatsConfig(subject_prefix=f"react{run}", stream_prefix=f"REACT{run}")
    conn = await asyncpg.connect(url)
    try:
        for rule in bench_rules(events):
            await create_rule(conn, LogAppender(), rule, ADMIN)
        rules_head = await conn.fetchval(_HEAD)
        worker_log = stack.workdir / f"worker-react-{run}.log"
        worker = start_worker(stack, database, nats_config, worker_log)
        try:
            await wait_for_consumer(nc.jetstream(), nats_config.events_stream, worker, worker_log)
        finally:
            await asyncio.to_thread(stop_worker, worker, worker_log)
        async with audit_client.connect(
            stack.nats.url, subject_prefix=nats_config.events_subject_prefix, max_in_flight=MAX_IN_FLIGHT
        ) as publisher:
            failures, _ = await publish_all(publisher, events)
        if failures:
            raise RuntimeError(f"{failures} publishes failed")
        await checkpoint(url)
        target = rules_head + len(events)
        worker = start_worker(stack, database, nats_config, worker_log)
        try:
            meter = Meter(stack, {"ingest worker": worker.pids[0]})
            ingest = await poll_until(conn, _HEAD, (), target, worker.processes, meter, moved_from=rules_head)
        finally:
            await asyncio.to_thread(stop_worker, worker, worker_log)
        print(
            f"  ingest (worker drains {len(events)}): {ingest['per_second']:,.0f} ev/s; "
            f"CPU {format_cpu(ingest['cpu_seconds'])}",
            flush=True,
        )
        await checkpoint(url)
        reactor_log = stack.workdir / f"react-{run}.log"
        reactor = start_reactor(stack, database, nats_config, reactor_log)
        try:
            meter = Meter(stack, {"reactor": reactor.pid})
            react = await poll_until(conn, _REACTOR_AT, (), target, [reactor], meter, moved_from=rules_head)
            alerts = await conn.fetchval("SELECT count(*) FROM alerts")
            thresholded = await conn.fetchval("SELECT count(*) FROM alerts WHERE cardinality(event_positions) > 1")
        finally:
            await asyncio.to_thread(stop_reactor, reactor, reactor_log)
    finally:
        await conn.close()
    ratio = react["per_second"] / ingest["per_second"]
    print(
        f"  reactor (50 rules over {len(events)}): {react['per_second']:,.0f} ev/s; {alerts} alerts "
        f"({alerts / len(events):.1%} of events; {thresholded} from thresholds); reactor / ingest {ratio:.2f}; "
        f"CPU {format_cpu(react['cpu_seconds'])}",
        flush=True,
    )
    return {
        "run": run,
        "ingest": ingest,
        "reactor": react,
        "alerts": alerts,
        "threshold_alerts": thresholded,
        "ratio_reactor_to_ingest": round(ratio, 3),
    }


async def reactor_phase(args: argparse.Namespace, stack: Stack, nc: nats.NATS) -> dict[str, Any]:
    events = build_events(args.events, seed=11)
    of_tenant(events)
    gc.collect()
    gc.freeze()
    runs = []
    for run in range(1, args.runs + 1):
        print(f"reactor run {run}: {args.events} events of {TENANT}, 50 rules ...", flush=True)
        runs.append(await reactor_run(stack, nc, run, events))
    del events
    gc.unfreeze()
    gc.collect()
    return {
        "events": args.events,
        "runs": runs,
        "median_ingest_per_second": statistics.median(r["ingest"]["per_second"] for r in runs),
        "median_reactor_per_second": statistics.median(r["reactor"]["per_second"] for r in runs),
        "median_ratio": statistics.median(r["ratio_reactor_to_ingest"] for r in runs),
    }


# --- phase 2: webhook latency ---------------------------------------------------------------------------------


class HookReceiver:
    """An aiohttp server on loopback recording (time.time() once the body is read, body) per request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: list[tuple[float, bytes]] = []
        self.events = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append((time.time(), body))
        return web.Response(status=204)

    async def _batch(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        self.events += body.count(b'"eventId"')
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/batch", self._batch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def latency_figures(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": percentile_ms(ordered, 0.50),
        "p90_ms": percentile_ms(ordered, 0.90),
        "p99_ms": percentile_ms(ordered, 0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def webhook_phase(args: argparse.Namespace, stack: Stack, nc: nats.NATS) -> dict[str, Any]:
    database = "webhook"
    url = await create_database(stack.postgres, database, app_role=True)
    nats_config = NatsConfig(subject_prefix="hook", stream_prefix="HOOK")
    receiver = HookReceiver()
    await receiver.start()
    conn = await asyncpg.connect(url)
    worker_log, reactor_log = stack.workdir / "worker-webhook.log", stack.workdir / "react-webhook.log"
    total = round(args.rate * (args.seconds + WARMUP_SECONDS))
    events = build_events(total, seed=13)
    warmup = round(args.rate * WARMUP_SECONDS)
    for index, event in enumerate(events):
        event.tenant = TENANT
        if index % PROBE_EVERY == 0:
            event.action = "alert.probe"
            event.message = f"probe {index}"
    sent: dict[int, float] = {}
    try:
        await create_destination(
            conn,
            LogAppender(),
            dpb.Destination(tenant=TENANT, name="hook", webhook=dpb.WebhookTarget(url=receiver.url)),
            ADMIN,
            SECRET,
        )
        await create_rule(
            conn,
            LogAppender(),
            rpb.AlertRule(
                tenant=TENANT,
                display_name="probe",
                enabled=True,
                query="action:alert.probe",
                severity=rpb.ALERT_SEVERITY_LOW,
                message_template="{message}",
                destinations=["hook"],
            ),
            ADMIN,
        )
        worker = start_worker(stack, database, nats_config, worker_log)
        reactor = start_reactor(stack, database, nats_config, reactor_log)
        try:
            await wait_for_consumer(nc.jetstream(), nats_config.events_stream, worker, worker_log)
            head = await conn.fetchval(_HEAD)
            deadline = time.monotonic() + 60
            while (await conn.fetchval(_REACTOR_AT) or 0) < head:
                if time.monotonic() > deadline or reactor.poll() is not None:
                    raise RuntimeError(f"the reactor did not start: {' | '.join(log_tail(reactor_log))}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * DeliveryConfig().poll_seconds)  # the supervisor has started the webhook's task
            meter = Meter(stack, {"ingest worker": worker.pids[0], "reactor": reactor.pid})
            print(
                f"webhook: {total} events at {args.rate:,.0f}/s ({WARMUP_SECONDS:g} s warm-up + {args.seconds:g} s), "
                f"1 in {PROBE_EVERY} raises an alert ...",
                flush=True,
            )
            failures = 0
            async with audit_client.connect(
                stack.nats.url, subject_prefix=nats_config.events_subject_prefix, max_in_flight=MAX_IN_FLIGHT
            ) as publisher:

                async def publish_one(index: int, event: event_pb2.AuditEvent) -> None:
                    nonlocal failures
                    sent[index] = time.time()
                    try:
                        await publisher.publish(event)
                    except audit_client.PublishError:
                        failures += 1

                pending: set[asyncio.Task[None]] = set()
                t_start = time.monotonic() + 0.05
                cpu_before: dict[str, float] = {}
                t_measured = 0.0
                for index, event in enumerate(events):
                    if index == warmup:
                        cpu_before, t_measured = meter.sample(), time.monotonic()
                    delay = t_start + index / args.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(publish_one(index, event))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.wait(pending)
                cpu = cpu_delta(cpu_before, meter.sample())
                window = time.monotonic() - t_measured
            probes = len(range(0, total, PROBE_EVERY))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(receiver.arrivals) >= probes:
                    break
                await asyncio.sleep(0.1)
            splits = await conn.fetch(
                """SELECT a.message, extract(epoch FROM e.recorded_at)::float8 AS recorded,
                          extract(epoch FROM a.created_at)::float8 AS created
                   FROM alerts a JOIN audit_events e ON e.position = a.event_positions[1]"""
            )
        finally:
            await asyncio.to_thread(stop_reactor, reactor, reactor_log)
            await asyncio.to_thread(stop_worker, worker, worker_log)
    finally:
        await conn.close()
        await receiver.stop()
    arrived: dict[int, float] = {}
    for arrival, body in receiver.arrivals:
        index = int(orjson.loads(body)["data"]["message"].split()[1])
        arrived.setdefault(index, arrival)
    measured = [index for index in arrived if index >= warmup]
    latencies = [arrived[index] - sent[index] for index in measured]
    by_index = {int(row["message"].split()[1]): row for row in splits}
    ingest = [by_index[i]["recorded"] - sent[i] for i in measured if i in by_index]
    react = [by_index[i]["created"] - by_index[i]["recorded"] for i in measured if i in by_index]
    deliver = [arrived[i] - by_index[i]["created"] for i in measured if i in by_index]
    expected = len([i for i in range(0, total, PROBE_EVERY) if i >= warmup])
    result = {
        "rate": args.rate,
        "seconds": args.seconds,
        "published": len(sent),
        "publish_failures": failures,
        "alerts_expected": expected,
        "alerts_arrived": len(measured),
        "webhook_requests": len(receiver.arrivals),
        "publish_to_webhook": latency_figures(latencies),
        "publish_to_recorded": latency_figures(ingest),
        "recorded_to_alert_stored": latency_figures(react),
        "alert_stored_to_webhook": latency_figures(deliver),
        "cpu_seconds": cpu,
        "disturbed": disturbed(cpu, window),
        "settings": delivery_settings(),
    }
    figures = result["publish_to_webhook"]
    print(
        f"  {len(measured)} of {expected} alerts arrived; publish -> webhook p50 {figures['p50_ms']:.0f} ms, "
        f"p90 {figures['p90_ms']:.0f}, p99 {figures['p99_ms']:.0f}, max {figures['max_ms']:.0f}; "
        f"CPU {format_cpu(cpu)}",
        flush=True,
    )
    return result


# --- loading a log --------------------------------------------------------------------------------------------


async def load_log(url: str, count: int, seed: int) -> float:
    """COPYs `count` events of TENANT (ingest_throughput's shape) as the service stores them: audit_events,
    audit_event_ids, the chain heads and the log head, LOAD_CHUNK per transaction. Returns events/s."""
    conn = await asyncpg.connect(url)
    try:
        now = dt.datetime.now(dt.UTC)
        for moment in (now, now + dt.timedelta(days=1)):
            await conn.execute("SELECT audit_ensure_partition($1)", moment)
        heads: dict[str, bytes] = {}
        started = time.perf_counter()
        position = 0
        recorded_at = now
        for chunk, start in enumerate(range(0, count, LOAD_CHUNK)):
            events = build_events(min(LOAD_CHUNK, count - start), seed=seed + chunk)
            of_tenant(events)
            rows = build_log_rows(events, first_position=position + 1, chain_heads=heads)
            columns = dict(zip(STORED_COLUMNS, range(len(STORED_COLUMNS)), strict=False))
            ids = [(row[columns["event_id"]], row[columns["position"]], row[columns["recorded_at"]]) for row in rows]
            async with conn.transaction():
                await conn.copy_records_to_table("audit_events", records=rows, columns=STORED_COLUMNS)
                await conn.copy_records_to_table(
                    "audit_event_ids", records=ids, columns=("event_id", "position", "recorded_at")
                )
            position += len(rows)
            recorded_at = rows[-1][columns["recorded_at"]]
            if position % (LOAD_CHUNK * 4) == 0 or position == count:
                print(f"  loaded {position:,} events ({position / (time.perf_counter() - started):,.0f}/s)", flush=True)
        await conn.execute("UPDATE audit_log_head SET last_position = $1, last_recorded_at = $2", count, recorded_at)
        await conn.executemany(
            "INSERT INTO audit_chain_heads (tenant, last_position, last_hash) VALUES ($1, $2, $3)",
            [(tenant, count, digest) for tenant, digest in heads.items()],
        )
        await conn.execute("VACUUM (ANALYZE) audit_events")
    finally:
        await conn.close()
    return count / (time.perf_counter() - started)


async def loaded_stack(
    stack: Stack, name: str, count: int, seed: int
) -> tuple[str, NatsConfig, subprocess.Popen[bytes], Path]:
    """A database holding `count` loaded events and a reactor (no rules) that has caught up on them."""
    url = await create_database(stack.postgres, name, app_role=True)
    print(f"{name}: loading {count:,} events of {TENANT} (COPY) ...", flush=True)
    await load_log(url, count, seed)
    await checkpoint(url)
    nats_config = NatsConfig(subject_prefix=name, stream_prefix=name.upper())
    reactor_log = stack.workdir / f"react-{name}.log"
    reactor = start_reactor(stack, name, nats_config, reactor_log)
    conn = await asyncpg.connect(url)
    try:
        meter = Meter(stack, {"reactor": reactor.pid})
        evaluated = await poll_until(conn, _REACTOR_AT, (), count, [reactor], meter)
        print(f"  the reactor (no rules) caught up on the log at {evaluated['per_second']:,.0f} ev/s", flush=True)
    finally:
        await conn.close()
    return url, nats_config, reactor, reactor_log


async def replay_and_time(
    conn: asyncpg.Connection,
    stack: Stack,
    reactor: subprocess.Popen[bytes],
    destination: dpb.Destination,
    receiver_pid: int | None = None,
) -> dict[str, Any]:
    """Creates the destination, replays it from 0, and times its checkpoint to the head; then pauses it."""
    destination.tenant = TENANT
    await create_destination(conn, LogAppender(), destination, ADMIN, SECRET)
    await replay_destination(conn, LogAppender(), TENANT, destination.name, after_position=0, since=None, actor=ADMIN)
    target = await conn.fetchval(_HEAD)
    expected = await conn.fetchval("SELECT count(*) FROM audit_events WHERE tenant = $1", TENANT)
    processes = {"reactor": reactor.pid} | ({"rsyslogd": receiver_pid} if receiver_pid else {})
    meter = Meter(stack, processes)
    timed = await poll_until(conn, _DESTINATION_AT, (TENANT, destination.name), target, [reactor], meter)
    await set_paused(conn, LogAppender(), TENANT, destination.name, True, ADMIN)
    return timed | {"expected_events": expected}


async def log_events(url: str) -> list[event_pb2.AuditEvent]:
    """Every event of the log, as the destination reads them (untimed; for the limits)."""
    pool = await create_pool(url, max_size=1)
    events = []
    try:
        after, head = 0, await pool.fetchval(_HEAD)
        while after < head:
            page = await read_range(pool, after, head, 5000, PAGE_BYTES * 8)
            events += [row_to_event(row) for row in page.rows]
            after = page.rows[-1]["position"]
    finally:
        await pool.close()
    return events


class LineCounter:
    """Counts the lines rsyslog has written to a file, reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self.lines = 0

    def count(self) -> int:
        if self._path.exists():
            with open(self._path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
            self._offset += len(data)
            self.lines += data.count(b"\n")
        return self.lines


async def until_lines(counter: LineCounter, target: int) -> float:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while counter.count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rsyslog wrote {counter.lines} of {target} lines")
        await asyncio.sleep(POLL_SECONDS)
    return time.perf_counter()


# --- phase 3: forwarding throughput ---------------------------------------------------------------------------


async def http_limit(receiver: HookReceiver, bodies: Sequence[bytes], events: int) -> dict[str, Any]:
    async with HttpSender(policy=AddressPolicy(allow_private=True), timeout=10) as sender:
        started = time.perf_counter()
        for body in bodies:
            await sender.send(receiver.url.replace("/hook", "/batch"), body, {"Content-Type": "application/json"})
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "per_second": round(events / seconds, 1)}


async def syslog_limit(daemon: RsyslogDaemon, counter: LineCounter, frames: Sequence[bytes], batch: int) -> dict:
    context = ssl.create_default_context(cadata=daemon.ca_pem)
    before = counter.count()
    started = time.perf_counter()
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.port, ssl=context, server_hostname="localhost")
    for start in range(0, len(frames), batch):
        writer.write(b"".join(frames[start : start + batch]))
        await writer.drain()
    written = time.perf_counter()
    finished = await until_lines(counter, before + len(frames))
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return {
        "write_seconds": round(written - started, 3),
        "seconds": round(finished - started, 3),
        "per_second": round(len(frames) / (finished - started), 1),
    }


async def forward_phase(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    url, _, reactor, reactor_log = await loaded_stack(stack, "forward", args.events, seed=101)
    receiver = HookReceiver()
    await receiver.start()
    daemon = RsyslogDaemon(stack.workdir / "rsyslog")
    daemon.start()
    counter = LineCounter(daemon.directory / "raw.log")
    conn = await asyncpg.connect(url)
    results: dict[str, Any] = {"events": args.events}
    try:
        events = await log_events(url)
        for batch in (100, 1000):
            name = f"http-{batch}"
            print(f"forward: http, batches of {batch} ...", flush=True)
            before = receiver.events
            timed = await replay_and_time(
                conn,
                stack,
                reactor,
                dpb.Destination(
                    name=name, http=dpb.HttpTarget(url=receiver.url.replace("/hook", "/batch")), max_batch_events=batch
                ),
            )
            timed["received_events"] = receiver.events - before
            bodies = [http_batch_body(events[i : i + batch], name) for i in range(0, len(events), batch)]
            timed["limit"] = await http_limit(receiver, bodies, len(events))
            timed["ratio_to_limit"] = round(timed["per_second"] / timed["limit"]["per_second"], 3)
            results[name] = timed
            print(
                f"  destination {timed['per_second']:,.0f} ev/s ({timed['received_events']} received); HttpSender "
                f"alone {timed['limit']['per_second']:,.0f} ev/s; ratio {timed['ratio_to_limit']:.2f}; "
                f"CPU {format_cpu(timed['cpu_seconds'])}",
                flush=True,
            )
            del bodies
        frames = [
            octet_counted(
                syslog_message(event, app_name=DEFAULT_APP_NAME, hostname=HOSTNAME, facility=DEFAULT_FACILITY)
            )
            for event in events
        ]
        for batch in (100, 1000):
            name = f"syslog-{batch}"
            print(f"forward: syslog over TLS to rsyslog, batches of {batch} ...", flush=True)
            lines_before = counter.count()
            destination = dpb.Destination(
                name=name,
                syslog=dpb.SyslogTarget(
                    address=f"127.0.0.1:{daemon.port}", ca_pem=daemon.ca_pem, server_name="localhost"
                ),
                max_batch_events=batch,
            )
            rsyslogd = daemon._process.pid if daemon._process is not None else None  # started by daemon.start()
            timed = await replay_and_time(conn, stack, reactor, destination, rsyslogd)
            expected = timed["expected_events"]
            finished = await until_lines(counter, lines_before + expected)
            started = timed.pop("t_first")
            timed["until_written_seconds"] = round(finished - started, 3)
            timed["written_per_second"] = round(expected / (finished - started), 1)
            timed["limit"] = await syslog_limit(daemon, counter, frames, batch)
            timed["ratio_to_limit"] = round(timed["per_second"] / timed["limit"]["per_second"], 3)
            results[name] = timed
            print(
                f"  destination {timed['per_second']:,.0f} ev/s (checkpoint), {timed['written_per_second']:,.0f} ev/s "
                f"replay -> written by rsyslog; raw TLS writes {timed['limit']['per_second']:,.0f} ev/s "
                f"(until written); ratio {timed['ratio_to_limit']:.2f}; CPU {format_cpu(timed['cpu_seconds'])}",
                flush=True,
            )
    finally:
        await conn.close()
        await receiver.stop()
        daemon.stop()
        await asyncio.to_thread(stop_reactor, reactor, reactor_log)
    return results


# --- phase 4: catch-up ------------------------------------------------------------------------------------------


async def sql_alone(url: str, target: int) -> dict[str, Any]:
    """The destination's own reads (list_events with its tenant scope, DEFAULT_BATCH_EVENTS a page) to the head."""
    pool = await create_pool(url, max_size=1)
    try:
        where = compile_filter(apb.EventFilter(), Scope(tenant=TENANT))
        after, pages = 0, 0
        started = time.perf_counter()
        while after < target:
            page = await list_events(
                pool,
                PageQuery(
                    where=where,
                    newest_first=False,
                    after_position=after,
                    limit=DEFAULT_BATCH_EVENTS,
                    max_bytes=PAGE_BYTES,
                    up_to_position=target,
                ),
            )
            if not page.rows:
                break
            after = page.rows[-1]["position"]
            pages += 1
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
    return {"seconds": round(seconds, 3), "per_second": round(target / seconds, 1), "pages": pages}


async def catchup_phase(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    url, _, reactor, reactor_log = await loaded_stack(stack, "catchup", args.catchup_events, seed=1001)
    receiver = HookReceiver()
    await receiver.start()
    conn = await asyncpg.connect(url)
    try:
        print(f"catch-up: http destination (batch {DEFAULT_BATCH_EVENTS}) replayed from 0 ...", flush=True)
        timed = await replay_and_time(
            conn,
            stack,
            reactor,
            dpb.Destination(name="catchup", http=dpb.HttpTarget(url=receiver.url.replace("/hook", "/batch"))),
        )
        timed["received_events"] = receiver.events
        head = await conn.fetchval(_HEAD)
    finally:
        await conn.close()
        await receiver.stop()
        await asyncio.to_thread(stop_reactor, reactor, reactor_log)
    timed["sql_alone"] = await sql_alone(url, head)
    print(
        f"  {timed['per_second']:,.0f} ev/s; replay -> caught up {timed['total_seconds']:.1f} s "
        f"({timed['received_events']} received); its SQL alone {timed['sql_alone']['per_second']:,.0f} ev/s; "
        f"CPU {format_cpu(timed['cpu_seconds'])}",
        flush=True,
    )
    return {"events": args.catchup_events} | timed


# --- report and main --------------------------------------------------------------------------------------------


def summary_lines(summary: dict[str, Any]) -> list[str]:
    machine, servers = summary["machine"], summary["servers"]
    lines = [
        "=" * 100,
        "reactor_throughput summary",
        f"machine     {machine['platform']}; os.cpu_count()={machine['cpu_count']}; python {machine['python']}",
        f"servers     PostgreSQL {servers['postgres_server_version']} (fsync={servers['postgres_fsync']}, "
        f"synchronous_commit={servers['postgres_synchronous_commit']}); {servers['nats_server']}",
        "settings    " + ", ".join(f"{name}={value}" for name, value in summary["settings"].items()),
    ]
    flag = lambda figures: "  [other processes took >10% of a core]" if figures.get("disturbed") else ""  # noqa: E731
    if (reactor := summary.get("reactor")) is not None:
        lines.append(
            f"reactor     {reactor['events']} events of one tenant, 50 rules, {len(reactor['runs'])} run(s): "
            f"median reactor {reactor['median_reactor_per_second']:,.0f} ev/s, ingest (worker drain) "
            f"{reactor['median_ingest_per_second']:,.0f} ev/s, reactor / ingest {reactor['median_ratio']:.2f}"
        )
        for run in reactor["runs"]:
            lines.append(
                f"  run {run['run']}    reactor {run['reactor']['per_second']:,.0f} ev/s, ingest "
                f"{run['ingest']['per_second']:,.0f} ev/s, {run['alerts']} alerts; reactor CPU "
                f"{format_cpu(run['reactor']['cpu_seconds'])}{flag(run['reactor'])}"
            )
    if (hook := summary.get("webhook")) is not None:
        lines.append(
            f"webhook     {hook['rate']:,.0f} events/s for {hook['seconds']:g} s, 1 in {PROBE_EVERY} alerts: "
            f"{hook['alerts_arrived']} of {hook['alerts_expected']} arrived{flag(hook)}"
        )
        for name in (
            "publish_to_webhook",
            "publish_to_recorded",
            "recorded_to_alert_stored",
            "alert_stored_to_webhook",
        ):
            f = hook[name]
            lines.append(
                f"  {name:<24} p50 {f['p50_ms']:7.0f} ms  p90 {f['p90_ms']:7.0f}  p99 {f['p99_ms']:7.0f}  "
                f"max {f['max_ms']:7.0f}  (n={f['count']})"
            )
    if (forward := summary.get("forward")) is not None:
        lines.append(f"forward     backlog of {forward['events']} events of one tenant")
        for name in ("http-100", "http-1000", "syslog-100", "syslog-1000"):
            f = forward.get(name)
            if f is None:
                continue
            extra = (
                f", replay -> written by rsyslog {f['written_per_second']:,.0f} ev/s"
                if "written_per_second" in f
                else ""
            )
            lines.append(
                f"  {name:<11} destination {f['per_second']:>9,.0f} ev/s{extra}; "
                f"limit {f['limit']['per_second']:>9,.0f} ev/s; ratio {f['ratio_to_limit']:.2f}{flag(f)}"
            )
    if (catchup := summary.get("catchup")) is not None:
        lines.append(
            f"catch-up    {catchup['events']:,} events, http batch {DEFAULT_BATCH_EVENTS}: "
            f"{catchup['per_second']:,.0f} ev/s, "
            f"replay -> caught up {catchup['total_seconds']:.1f} s; the same SQL alone "
            f"{catchup['sql_alone']['per_second']:,.0f} ev/s{flag(catchup)}"
        )
    lines.append("=" * 100)
    return lines


def write_results(summary: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"reactor_throughput-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


async def benchmark(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "benchmark": "reactor_throughput",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "servers": await server_info(stack.postgres),
        "settings": delivery_settings(),
        "arguments": vars(args),
    }
    print("settings: " + ", ".join(f"{name}={value}" for name, value in summary["settings"].items()), flush=True)
    nc = await nats.connect(stack.nats.url, name="bench-admin")
    try:
        if "reactor" in args.phases:
            summary["reactor"] = await reactor_phase(args, stack, nc)
        if "webhook" in args.phases:
            summary["webhook"] = await webhook_phase(args, stack, nc)
        if "forward" in args.phases:
            summary["forward"] = await forward_phase(args, stack)
        if "catchup" in args.phases:
            summary["catchup"] = await catchup_phase(args, stack)
    finally:
        await nc.close()
    return summary


PHASES = ("reactor", "webhook", "forward", "catchup")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="20k events, 1 run, 5 s, 50k catch-up: a quick look")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--events", type=int, help="backlog of the reactor and forward phases (default 200000)")
    parser.add_argument("--runs", type=int, help="reactor phase runs (default 3)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s in the webhook phase (default 1000)")
    parser.add_argument("--seconds", type=float, help="measured seconds of the webhook phase (default 20)")
    parser.add_argument("--catchup-events", type=int, help="events of the catch-up phase (default 1000000)")
    args = parser.parse_args(argv)
    defaults = (20_000, 1, 5.0, 50_000) if args.quick else (200_000, 3, 20.0, 1_000_000)
    for name, default in zip(("events", "runs", "seconds", "catchup_events"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"audit-bench-react-{uuid.uuid4().hex[:6]}-"))
    stack = Stack(
        workdir=workdir,
        postgres=EmbeddedPostgres(workdir / "pg", port=free_port(), durable=True),
        nats=NatsServer(workdir / "nats", port=free_port()),
    )
    try:
        stack.start()
        print(f"servers up in {workdir}: PostgreSQL :{stack.postgres.port}, NATS :{stack.nats.port}", flush=True)
        summary = asyncio.run(benchmark(args, stack))
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary_lines(summary)))
    print(f"results written to {write_results(summary).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
