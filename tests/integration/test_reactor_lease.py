"""One active reactor: a second `react` stands by and takes over when the first is killed, with nothing lost,
stored twice or delivered by both at once."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import destinations_pb2 as dpb
from audit.v1 import event_pb2
from audit_service.store.alert_rules import create_rule
from audit_service.store.append import LogAppender
from audit_service.store.config_changes import Actor
from audit_service.store.destinations import create_destination
from audit_service.store.reactor_lease import ReactorLease

from ..conftest import ServiceProcess, eventually, store_events
from ..factories import make_event
from ..http_receiver import receiving

ADMIN = Actor("u-admin")


async def test_a_second_lease_waits_until_the_first_is_released(database):
    first, second = ReactorLease(database.app_url), ReactorLease(database.app_url, retry_seconds=0.05)
    stop = asyncio.Event()
    assert await first.acquire(stop)
    waiting = asyncio.create_task(second.acquire(stop))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # the lease is held: the second one stands by
    await first.release()
    assert await asyncio.wait_for(waiting, timeout=10)
    halt = asyncio.Event()
    watcher = asyncio.create_task(second.watch(halt))
    await second.release()  # its connection gone: the watch notices and halts
    second._check_seconds = 0.05
    await asyncio.wait_for(halt.wait(), timeout=10)
    await watcher
    stop.set()


@pytest.mark.slow
async def test_a_standby_reactor_takes_over_after_kill_9_and_nothing_is_doubled(database, app, service_env, tmp_path):
    async with receiving() as hooks:
        hooks.delay = 0.02
        webhook = dpb.Destination(tenant="acme", name="pager", webhook=dpb.WebhookTarget(url=hooks.url))
        await create_destination(app, LogAppender(), webhook, ADMIN, "whsec_" + "QUJD" * 8)
        rule = rules_pb.AlertRule(
            tenant="acme",
            display_name="Every deletion",
            enabled=True,
            query="action:doc.delete",
            severity=rules_pb.ALERT_SEVERITY_LOW,
            destinations=["pager"],
        )
        await create_rule(app, LogAppender(), rule, ADMIN)
        await store_events(
            database,
            [make_event("acme", action="doc.delete", outcome=event_pb2.OUTCOME_SUCCESS) for _ in range(80)],
        )
        env = {
            **service_env,
            "AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true",
            "AUDIT_DELIVERY_POLL_SECONDS": "0.05",
            "AUDIT_REACTOR_PAGE_EVENTS": "4",
        }
        active = ServiceProcess("react", env, tmp_path / "react-1.log", "holding the lease")
        standby = ServiceProcess("react", env, tmp_path / "react-2.log", "standing by")
        active.start()
        try:
            await active.ready()
            standby.start()
            await standby.ready()

            async def under_way() -> bool:
                return len(hooks.requests) >= 10

            await eventually(under_way, what="deliveries under way")
            assert "holding the lease" not in standby.output()  # it never worked beside the active one
            active.kill()  # SIGKILL: PostgreSQL ends its session, and the lock with it

            async def all_delivered() -> bool:
                return len({r.headers["webhook-id"] for r in hooks.requests}) == 80

            await eventually(all_delivered, within=60, what="the standby finishing the work")
            assert "holding the lease (taking over)" in standby.output()
        finally:
            active.close()
            standby.close()
        alerts = [row["id"] for row in await app.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")]
        assert len(alerts) == 80 == len(set(alerts))
        delivered = [r.headers["webhook-id"] for r in hooks.requests]
        assert list(dict.fromkeys(delivered)) == alerts  # in order; a repeat only of the one in flight at the kill
        assert len(delivered) - len(set(delivered)) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["database_outage", "sessions_ending"])
async def test_a_database_fault_under_the_reactor_loses_and_doubles_nothing(
    database, app, owner, service_env, tmp_path, fault, request
):
    """An outage (the database closed to the service and its sessions ended), or sessions that end again and
    again while new ones are let in: the reactor rides either out. The latter once killed it in CI: asyncpg
    raised InternalClientError on a session that had just ended, which no retry loop caught."""
    database_fault = request.getfixturevalue(fault)
    async with receiving() as hooks, receiving() as siem:
        hooks.delay = siem.delay = 0.02
        secret = "whsec_" + "QUJD" * 8
        await create_destination(
            app,
            LogAppender(),
            dpb.Destination(tenant="acme", name="pager", webhook=dpb.WebhookTarget(url=hooks.url)),
            ADMIN,
            secret,
        )
        await create_destination(
            app,
            LogAppender(),
            dpb.Destination(
                tenant="acme",
                name="siem",
                http=dpb.HttpTarget(url=siem.url),
                query="action:doc.delete",
                max_batch_events=2,
            ),
            ADMIN,
            secret,
        )
        rule = rules_pb.AlertRule(
            tenant="acme",
            display_name="Every deletion",
            enabled=True,
            query="action:doc.delete",
            severity=rules_pb.ALERT_SEVERITY_LOW,
            destinations=["pager"],
        )
        await create_rule(app, LogAppender(), rule, ADMIN)
        ids = await store_events(
            database, [make_event("acme", action="doc.delete", outcome=event_pb2.OUTCOME_SUCCESS) for _ in range(60)]
        )
        env = {
            **service_env,
            "AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true",
            "AUDIT_DELIVERY_POLL_SECONDS": "0.05",
            "AUDIT_DELIVERY_RETRY_CAP_SECONDS": "1",
            "AUDIT_REACTOR_PAGE_EVENTS": "4",
        }
        reactor = ServiceProcess("react", env, tmp_path / "react.log", "holding the lease")
        reactor.start()
        try:
            await reactor.ready()

            async def under_way() -> bool:
                return len(hooks.requests) >= 10 and len(siem.requests) >= 5

            await eventually(under_way, what="deliveries under way")
            async with database_fault() as ending:
                await asyncio.sleep(5)
            if fault == "sessions_ending":
                assert ending.ended > 20  # the fault was real: sessions did end under the reactor
            delivered_before = len(hooks.requests)

            async def all_delivered() -> bool:
                events = {e["eventId"] for r in siem.requests for e in orjson.loads(r.body)["events"]}
                return len({r.headers["webhook-id"] for r in hooks.requests}) == 60 and events == set(ids)

            await eventually(all_delivered, within=90, what="everything delivered after the outage")
            assert reactor.process.poll() is None  # it rode the outage out
            assert "lost the lease" in reactor.output() and delivered_before < 60
            assert "failed; resuming" not in reactor.output()  # each failure was one it expects
        finally:
            reactor.close()
        # The outage closed the test's own connections of the service role: the owner's stayed.
        alerts = [row["id"] for row in await owner.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")]
        assert len(alerts) == 60 == len(set(alerts))
        assert list(dict.fromkeys(r.headers["webhook-id"] for r in hooks.requests)) == alerts
        streamed = [e["eventId"] for r in siem.requests for e in orjson.loads(r.body)["events"]]
        assert list(dict.fromkeys(streamed)) == ids
