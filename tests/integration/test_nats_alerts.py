"""Alert delivery on NATS on real parts: events ingested by the real worker, alerts raised and stored by the
reactor, published by it on <prefix>.alerts.<tenant> into the alerts stream (in-process, or `audit-service react`
started while its NATS is down, killed with SIGKILL and restarted): each alert once in the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nats
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit_service.config import Config
from audit_service.core.stored_alert import ALERT_COLUMNS, row_to_alert
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port
from audit_service.runtime import run_react
from google.protobuf import json_format

from ..conftest import ServiceProcess, eventually
from .test_reactor import add_rules, caught_up, deletion, deletions, publish_all

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def reacting(config: Config) -> AsyncIterator[None]:
    """`audit-service react`'s code path, in-process, for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_react(config, stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def delivered_up_to(app: asyncpg.Connection) -> int:
    return await app.fetchval("SELECT position FROM reactor_checkpoints WHERE subscription = 'alerts-nats'") or 0


async def stream_msg_ids(nc, stream: str) -> list[str]:
    """The Nats-Msg-Id of every message in the stream, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    first = info.state.first_seq
    return [(await js.get_msg(stream, seq)).headers["Nats-Msg-Id"] for seq in range(first, first + info.state.messages)]


async def test_an_alert_arrives_on_its_tenants_subject_with_its_id_and_payload_and_nowhere_else(
    app, config, nc, publisher, start_worker
):
    await start_worker()
    await add_rules(app, deletions("acme"), deletions("globex"))
    prefix = config.nats.alerts_subject_prefix
    acme, globex = await nc.subscribe(f"{prefix}.acme"), await nc.subscribe(f"{prefix}.globex")
    async with reacting(config):
        await publish_all(publisher, app, [deletion("u-1"), deletion("u-2")])
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
        rows = await app.fetch(f"SELECT {ALERT_COLUMNS} FROM alerts ORDER BY seq")
        assert len(rows) == 2
        received = [await acme.next_msg(timeout=30) for _ in rows]
        await eventually(
            lambda: _equals(delivered_up_to(app), rows[-1]["seq"]), what="the delivery checkpoint past both"
        )
        await nc.flush()
        assert globex.pending_msgs == 0, "globex's subscriber heard acme's alerts"

        await publish_all(publisher, app, [deletion("g-1", "globex")])
        theirs = await globex.next_msg(timeout=30)
    assert [msg.subject for msg in received] == [f"{prefix}.acme"] * 2
    assert [msg.headers["Nats-Msg-Id"] for msg in received] == [row["id"] for row in rows]
    for msg, row in zip(received, rows, strict=True):
        alert = json_format.Parse(msg.data, rules_pb.Alert())
        assert alert == row_to_alert(row)
        assert (alert.tenant, len(alert.event_positions)) == ("acme", 1)
    assert json_format.Parse(theirs.data, rules_pb.Alert()).tenant == "globex"
    assert acme.pending_msgs == 0
    ids = await stream_msg_ids(nc, config.nats.alerts_stream)
    stored = [row["id"] for row in await app.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")]
    assert ids == stored  # in the stream once each, in storage order


async def test_a_react_process_started_without_nats_evaluates_and_after_kill_9_every_alert_is_in_the_stream_once(
    app, owner, publisher, start_worker, service_env, tmp_path: Path
):
    await start_worker()
    await add_rules(app, deletions("acme"), deletions("globex"))
    await publish_all(publisher, app, [deletion(f"u-{n}", "globex" if n % 4 == 0 else "acme") for n in range(60)])
    # The reactor's NATS is down when it starts: rules are evaluated all the same, alerts wait in PostgreSQL.
    alerts_nats = NatsServer(tmp_path / "alerts-nats", port=free_port())
    process = ServiceProcess(
        "react",
        {
            **service_env,
            "AUDIT_NATS_URL": alerts_nats.url,
            "AUDIT_REACTOR_PAGE_EVENTS": "5",
            "AUDIT_REACTOR_PUBLISH_PAGE_ALERTS": "1",  # one alert per page: killed midway
        },
        tmp_path / "react.log",
        "resuming after",
    )
    process.start()
    try:
        await process.ready()
        await eventually(lambda: caught_up(app), what="the reactor at the log's head without NATS")
        assert await app.fetchval("SELECT count(*) FROM alerts") == 60
        assert await delivered_up_to(app) == 0
        assert "alert delivery: NATS: " in process.output()  # one warning of the outage

        await asyncio.to_thread(alerts_nats.start)

        async def midway() -> bool:
            assert process.process.poll() is None, process.output()
            return await delivered_up_to(app) >= 10

        await eventually(midway, what="the delivery midway")
        process.kill()  # SIGKILL: no clean shutdown
        last_seq = await app.fetchval("SELECT max(seq) FROM alerts")
        stopped_at = await delivered_up_to(app)
        assert stopped_at < last_seq, "the delivery finished before it was killed: nothing was tested"
        # As if it had also published 5 more pages before the crash, without checkpointing them: they go again.
        await owner.execute(
            "UPDATE reactor_checkpoints SET position = $1 WHERE subscription = 'alerts-nats'", stopped_at - 5
        )
        process.start()
        await process.ready()
        await eventually(lambda: _equals(delivered_up_to(app), last_seq), what="every alert published")
    finally:
        process.close()
    try:
        async with contextlib.AsyncExitStack() as stack:
            client = await nats.connect(alerts_nats.url)
            stack.push_async_callback(client.close)
            ids = await stream_msg_ids(client, f"{service_env['AUDIT_STREAM_PREFIX']}_ALERTS")
    finally:
        await asyncio.to_thread(alerts_nats.stop)
    stored = [row["id"] for row in await app.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")]
    assert len(ids) == len(stored) == 60
    assert sorted(ids) == sorted(stored)  # each alert exactly once: JetStream dropped the republished ones


async def _equals(value, expected) -> bool:
    return await value == expected
