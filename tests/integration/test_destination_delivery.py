"""Destinations delivering for real: the reactor's subscriptions against real HTTP receivers (aiohttp on loopback)
and a real rsyslog over TLS, real PostgreSQL. In log order, at least once with the event id, resumed after
kill -9, paused, resumed and replayed; a receiver down for 30 s gets everything after; a receiver answering 500
forever is marked failing while the others flow; webhooks of alerts signed per Standard Webhooks, retried and
given up; every attempt visible."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import asyncpg
import grpc
import orjson
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import destinations_pb2 as dpb
from audit.v1 import destinations_pb2_grpc, event_pb2
from audit_service.config import DeliveryConfig
from audit_service.core.destination_urls import AddressPolicy
from audit_service.delivery.destinations import DestinationSupervisor
from audit_service.delivery.doorbell import Doorbell
from audit_service.store.alert_rules import create_rule
from audit_service.store.append import LogAppender
from audit_service.store.config_changes import Actor
from audit_service.store.destinations import create_destination, replay_destination, set_paused
from audit_service.store.pool import create_pool
from audit_service.store.reactor import react
from standardwebhooks.webhooks import Webhook

from ..conftest import JWT_SECRET, ServiceProcess, bearer, eventually, serving_with_auth, store_events
from ..factories import make_event
from ..http_receiver import Receiver, receiving
from ..syslog_daemon import RsyslogDaemon

ADMIN = Actor("u-admin")
SECRET = "whsec_" + "c2VjcmV0LWtleS1vZi10aGUtdGVzdHMtMzJieXRlcyE="  # 32 bytes
FAST = DeliveryConfig(
    allow_private=True,
    webhook_max_attempts=3,
    retry_base_seconds=0.05,
    retry_cap_seconds=0.5,
    request_timeout_seconds=2.0,
    poll_seconds=0.05,
)


@contextlib.asynccontextmanager
async def delivering(
    database, config: DeliveryConfig = FAST, *, alerts: bool = False, doorbell: Doorbell | None = None
) -> AsyncIterator[None]:
    """The reactor's destinations (and, with alerts, its rule evaluation) in this process."""
    pool = await create_pool(database.app_url, max_size=8)
    stop = asyncio.Event()
    supervisor = DestinationSupervisor(pool, config, AddressPolicy(allow_private=True), doorbell)
    tasks = [asyncio.create_task(supervisor.run(stop))]
    if alerts:
        ring = None if doorbell is None else doorbell.ring
        tasks.append(asyncio.create_task(react(pool, stop, poll_seconds=0.05, on_step=ring)))
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await pool.close()


async def add_destination(app: asyncpg.Connection, destination: dpb.Destination) -> dpb.Destination:
    destination.tenant = destination.tenant or "acme"
    return (await create_destination(app, LogAppender(), destination, ADMIN, SECRET)).destination


def http_destination(name: str, receiver: Receiver, **fields) -> dpb.Destination:
    return dpb.Destination(name=name, http=dpb.HttpTarget(url=receiver.url), **fields)


def events_of(tenant: str, count: int, *, outcome: int = event_pb2.OUTCOME_SUCCESS, action: str = "doc.read"):
    return [make_event(tenant, action=action, outcome=outcome, message=f"é 😀 {n}") for n in range(count)]


def delivered_events(receiver: Receiver) -> list[dict]:
    """Every event of every batch the receiver got, in arrival order (repeats included)."""
    return [event for request in receiver.requests for event in orjson.loads(request.body)["events"]]


async def state(app: asyncpg.Connection, name: str) -> asyncpg.Record:
    return await app.fetchrow("SELECT * FROM destination_state WHERE name = $1", name)


async def test_an_http_destination_gets_its_tenants_matching_events_in_order_signed_in_batches(database, app):
    async with receiving() as receiver:
        await add_destination(
            app,
            http_destination(
                "siem", receiver, query="outcome:failure", max_batch_events=7, headers={"Authorization": "Bearer r-1"}
            ),
        )
        mixed = []
        for n in range(40):
            mixed.append(
                events_of("acme", 1, outcome=event_pb2.OUTCOME_FAILURE if n % 2 else event_pb2.OUTCOME_SUCCESS)[0]
            )
            mixed.append(events_of("globex", 1, outcome=event_pb2.OUTCOME_FAILURE)[0])
        ids = await store_events(database, mixed)
        wanted = [
            event_id
            for event_id, event in zip(ids, mixed, strict=True)
            if event.tenant == "acme" and event.outcome == event_pb2.OUTCOME_FAILURE
        ]
        assert len(wanted) == 20
        async with delivering(database):
            await eventually(lambda: _count(receiver, len(wanted)), what="20 events at the receiver")

            async def recorded() -> bool:  # the attempt is stored with the checkpoint, just after the answer
                attempts = await app.fetchval("SELECT count(*) FROM delivery_attempts WHERE destination = 'siem'")
                return attempts == len(receiver.requests)

            await eventually(recorded, what="every attempt recorded")
        got = delivered_events(receiver)
        assert [e["eventId"] for e in got] == wanted  # exactly these, in log order, once
        positions = [int(e["position"]) for e in got]
        assert positions == sorted(positions)
        assert all(len(orjson.loads(r.body)["events"]) <= 7 for r in receiver.requests)
        for request in receiver.requests:
            Webhook(SECRET).verify(request.body, request.headers)  # raises on a bad signature
            batch = orjson.loads(request.body)["events"]
            assert request.headers["webhook-id"] == f"batch_{batch[0]['position']}-{batch[-1]['position']}"
            assert request.headers["Authorization"] == "Bearer r-1"
            assert request.headers["Content-Type"] == "application/json"
        attempts = await app.fetch("SELECT * FROM delivery_attempts WHERE destination = 'siem' ORDER BY seq")
        assert len(attempts) == len(receiver.requests) and {a["outcome"] for a in attempts} == {
            dpb.ATTEMPT_OUTCOME_DELIVERED
        }
        assert sum(a["items"] for a in attempts) == 20 and {a["http_status"] for a in attempts} == {200}


async def _count(receiver: Receiver, count: int) -> bool:
    return len(delivered_events(receiver)) >= count


async def test_splunk_hec_gets_its_events_with_the_token(database, app):
    async with receiving() as receiver:
        await add_destination(
            app,
            dpb.Destination(
                name="splunk",
                splunk_hec=dpb.SplunkHecTarget(url=receiver.url, index="audit", sourcetype="audit:event"),
                secret="0f9c2d38-7d4b-4e0e-9a3a-0d6b1f2c3e4d",
            ),
        )
        ids = await store_events(database, events_of("acme", 12))
        async with delivering(database):

            async def all_there() -> bool:
                return sum(len(r.body.splitlines()) for r in receiver.requests) >= 12

            await eventually(all_there, what="12 HEC events")
        lines = [json.loads(line) for r in receiver.requests for line in r.body.splitlines()]
        assert [line["event"]["eventId"] for line in lines] == ids
        assert {line["index"] for line in lines} == {"audit"} and {line["sourcetype"] for line in lines} == {
            "audit:event"
        }
        assert {r.headers["Authorization"] for r in receiver.requests} == {
            "Splunk 0f9c2d38-7d4b-4e0e-9a3a-0d6b1f2c3e4d"
        }


async def test_syslog_over_tls_reaches_a_real_rsyslog_in_order(database, app, tmp_path):
    daemon = RsyslogDaemon(tmp_path / "rsyslog")
    daemon.start()
    try:
        await add_destination(
            app,
            dpb.Destination(
                name="syslog",
                syslog=dpb.SyslogTarget(
                    address=f"127.0.0.1:{daemon.port}", ca_pem=daemon.ca_pem, server_name="localhost"
                ),
                query="action:doc.delete",
            ),
        )
        events = [
            *events_of("acme", 5, action="doc.delete"),
            *events_of("acme", 5),
            *events_of("globex", 3, action="doc.delete"),
        ]
        ids = await store_events(database, events)
        async with delivering(database):
            lines = await asyncio.to_thread(daemon.wait_for_lines, "raw.log", 5)
        assert [_event_id(line) for line in lines] == ids[:5]
        assert all("é 😀".encode() in line for line in lines)
    finally:
        daemon.stop()


def _event_id(line: bytes) -> str:
    return line.split(b'event_id="', 1)[1].split(b'"', 1)[0].decode()


@pytest.mark.slow
async def test_a_receiver_down_for_30_seconds_gets_everything_after_in_order(database, app):
    async with receiving() as receiver:
        await add_destination(app, http_destination("siem", receiver, max_batch_events=5))
        first = await store_events(database, events_of("acme", 10))
        async with delivering(database):
            await eventually(lambda: _count(receiver, 10), what="the first 10 events")
            await receiver.stop()
            during = await store_events(database, events_of("acme", 25))
            await asyncio.sleep(30)
            failing = await state(app, "siem")
            assert failing["consecutive_failures"] >= 3 and "could not connect" in failing["last_error"]
            await receiver.start()
            after = await store_events(database, events_of("acme", 5))
            await eventually(lambda: _count(receiver, 40), what="all 40 events")
        got = [e["eventId"] for e in delivered_events(receiver)]
        assert got == first + during + after
        recovered = await state(app, "siem")
        assert recovered["consecutive_failures"] == 0 and recovered["last_error"] == ""
        outcomes = {row["outcome"] for row in await app.fetch("SELECT outcome FROM delivery_attempts")}
        assert outcomes == {dpb.ATTEMPT_OUTCOME_RETRYING, dpb.ATTEMPT_OUTCOME_DELIVERED}


async def test_a_destination_failing_forever_is_marked_failing_and_others_keep_flowing(database, app, service_env):
    async with receiving() as broken, receiving() as healthy, receiving() as hanging:
        broken.status = 500
        hanging.hang = True
        await add_destination(app, http_destination("broken", broken))
        await add_destination(app, http_destination("hanging", hanging))
        await add_destination(app, http_destination("healthy", healthy))
        ids = await store_events(database, events_of("acme", 30))
        async with delivering(database):
            await eventually(lambda: _count(healthy, 30), what="the healthy destination caught up")

            async def marked_failing() -> bool:
                return (await state(app, "broken"))["consecutive_failures"] >= 3

            await eventually(marked_failing, what="the broken destination marked failing")
            more = await store_events(database, events_of("acme", 3))
            await eventually(lambda: _count(healthy, 33), what="later events still flow")
        assert [e["eventId"] for e in delivered_events(healthy)] == ids + more
        env = service_env | {"AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true"}
        async with (
            serving_with_auth(env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            from audit_service.auth.tokens import mint_token

            token = mint_token(config.auth, subject="u-admin", tenant="acme", admin=True, ttl_seconds=600)
            stub = destinations_pb2_grpc.DestinationServiceStub(channel)
            status = (
                await stub.GetDestinationStatus(dpb.GetDestinationStatusRequest(name="broken"), metadata=bearer(token))
            ).status
            assert status.state == dpb.DELIVERY_STATE_FAILING and "answered 500" in status.last_error
            assert status.lag > 0 and status.lag_seconds > 0 and status.checkpoint < status.head
            good = (
                await stub.GetDestinationStatus(dpb.GetDestinationStatusRequest(name="healthy"), metadata=bearer(token))
            ).status
            assert good.state == dpb.DELIVERY_STATE_ACTIVE and good.consecutive_failures == 0
            attempts = await stub.ListDeliveryAttempts(
                dpb.ListDeliveryAttemptsRequest(name="broken", page_size=2), metadata=bearer(token)
            )
            assert len(attempts.attempts) == 2 and attempts.next_page_token
            assert all(a.outcome == dpb.ATTEMPT_OUTCOME_RETRYING and a.http_status == 500 for a in attempts.attempts)
            assert attempts.attempts[0].attempt > attempts.attempts[1].attempt  # newest first
        # The same first batch, again and again: nothing skipped (it starts with the tenant's next event after the
        # destination's creation, here the creation of "hanging": configuration changes are audit events too).
        first_ids = {orjson.loads(r.body)["events"][0]["eventId"] for r in broken.requests}
        assert len(broken.requests) >= 3 and len(first_ids) == 1


async def test_pause_resume_and_replay_from_a_position_or_a_time(database, app):
    async with receiving() as receiver:
        # Its own pause and resume are audit events of the tenant too: the filter leaves them out.
        await add_destination(app, http_destination("siem", receiver, query="action:doc.read"))
        first = await store_events(database, events_of("acme", 6))
        async with delivering(database):
            await eventually(lambda: _count(receiver, 6), what="6 events")
            await set_paused(app, LogAppender(), "acme", "siem", True, ADMIN)
            await asyncio.sleep(0.3)  # the supervisor stops the subscription at its next look
            paused_at = len(receiver.requests)
            while_paused = await store_events(database, events_of("acme", 4))
            await asyncio.sleep(0.5)
            assert len(receiver.requests) == paused_at  # paused: nothing sent
            await set_paused(app, LogAppender(), "acme", "siem", False, ADMIN)
            await eventually(lambda: _count(receiver, 10), what="the paused events after resuming")
            assert [e["eventId"] for e in delivered_events(receiver)] == first + while_paused
            receiver.requests.clear()
            await replay_destination(app, LogAppender(), "acme", "siem", after_position=0, since=None, actor=ADMIN)
            await eventually(lambda: _count(receiver, 10), what="a replay from position 0")
            assert [e["eventId"] for e in delivered_events(receiver)] == first + while_paused
            receiver.requests.clear()
            moment = await app.fetchval(
                "SELECT recorded_at FROM audit_events WHERE event_id = $1::uuid", while_paused[0]
            )
            await replay_destination(app, LogAppender(), "acme", "siem", after_position=None, since=moment, actor=ADMIN)
            await eventually(lambda: _count(receiver, 4), what="a replay from a time")
            assert [e["eventId"] for e in delivered_events(receiver)] == while_paused


async def test_webhooks_get_each_alert_signed_once_retried_then_given_up(database, app):
    async with receiving() as receiver, receiving() as dead:
        dead.status = 503
        await add_destination(app, dpb.Destination(name="pager", webhook=dpb.WebhookTarget(url=receiver.url)))
        await add_destination(app, dpb.Destination(name="dead", webhook=dpb.WebhookTarget(url=dead.url)))
        rule = rules_pb.AlertRule(
            tenant="acme",
            display_name="Deletions",
            enabled=True,
            query="action:doc.delete",
            severity=rules_pb.ALERT_SEVERITY_HIGH,
            message_template="{actor.id} deleted {resource.id}",
            destinations=["pager", "dead"],
        )
        await create_rule(app, LogAppender(), rule, ADMIN)
        await store_events(database, events_of("acme", 4, action="doc.delete"))
        async with delivering(database, alerts=True):
            await eventually(lambda: _requests(receiver, 4), what="4 alerts at the webhook")

            async def given_up() -> bool:
                return (
                    await app.fetchval(
                        "SELECT count(*) FROM delivery_attempts WHERE destination = 'dead' AND outcome = $1",
                        dpb.ATTEMPT_OUTCOME_FAILED,
                    )
                    >= 4
                )

            await eventually(given_up, what="the dead webhook's 4 alerts given up")
        alerts = await app.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")
        assert [r.headers["webhook-id"] for r in receiver.requests] == [a["id"] for a in alerts]
        for request in receiver.requests:
            payload = Webhook(SECRET).verify(request.body, request.headers)
            assert payload["type"] == "audit.alert" and payload["data"]["id"] == request.headers["webhook-id"]
            assert payload["data"]["message"].endswith(" deleted ") or "deleted" in payload["data"]["message"]
        assert len(dead.requests) == 4 * FAST.webhook_max_attempts
        per_alert = await app.fetch(
            "SELECT delivery_id, array_agg(outcome ORDER BY attempt) AS outcomes FROM delivery_attempts "
            "WHERE destination = 'dead' GROUP BY delivery_id"
        )
        assert {row["delivery_id"] for row in per_alert} == {a["id"] for a in alerts}
        failing = [dpb.ATTEMPT_OUTCOME_RETRYING, dpb.ATTEMPT_OUTCOME_RETRYING, dpb.ATTEMPT_OUTCOME_FAILED]
        assert all(list(row["outcomes"]) == failing for row in per_alert)
        assert (await state(app, "dead"))["checkpoint"] == (await state(app, "pager"))["checkpoint"]


async def _requests(receiver: Receiver, count: int) -> bool:
    return len(receiver.requests) >= count


@pytest.mark.slow
async def test_kill_9_mid_delivery_loses_nothing_and_repeats_only_with_the_same_ids(
    database, app, service_env, tmp_path
):
    async with receiving() as events_receiver, receiving() as hooks:
        events_receiver.delay = hooks.delay = 0.05  # slow receivers: the kill lands mid-delivery
        await add_destination(
            app, http_destination("siem", events_receiver, max_batch_events=3, query="action:doc.delete")
        )
        await add_destination(
            app, dpb.Destination(name="pager", webhook=dpb.WebhookTarget(url=hooks.url + "/t0ken-in-path"))
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
        ids = await store_events(database, events_of("acme", 60, action="doc.delete"))
        env = {
            **service_env,
            "AUDIT_DESTINATIONS_ALLOW_PRIVATE": "true",
            "AUDIT_DELIVERY_POLL_SECONDS": "0.05",
            "AUDIT_REACTOR_PAGE_EVENTS": "5",
        }
        process = ServiceProcess("react", env, tmp_path / "react.log", "resuming after")
        process.start()
        try:
            await eventually(lambda: _count(events_receiver, 15), what="deliveries under way")
            process.process.kill()  # SIGKILL, mid-delivery
            process.process.wait()
            assert len(delivered_events(events_receiver)) < 60 or len(hooks.requests) < 60, "nothing was in flight"
            process.start()

            async def all_delivered() -> bool:
                return (
                    len({e["eventId"] for e in delivered_events(events_receiver)}) == 60
                    and len({r.headers["webhook-id"] for r in hooks.requests}) == 60
                )

            await eventually(all_delivered, within=60, what="everything delivered after the restart")
        finally:
            output = process.output()
            process.close()
        got = [e["eventId"] for e in delivered_events(events_receiver)]
        assert sorted(set(got), key=ids.index) == ids  # nothing lost
        first_seen = list(dict.fromkeys(got))
        assert first_seen == ids  # in log order; a repeat is a resent batch, with its events' ids
        alerts = await app.fetch("SELECT id::text AS id FROM alerts ORDER BY seq")
        assert len(alerts) == 60 == len({a["id"] for a in alerts})  # none stored twice
        hook_ids = [r.headers["webhook-id"] for r in hooks.requests]
        assert set(hook_ids) == {a["id"] for a in alerts}
        assert list(dict.fromkeys(hook_ids)) == [a["id"] for a in alerts]
        for secret_part in (SECRET, SECRET.removeprefix("whsec_"), "t0ken-in-path"):
            assert secret_part not in output  # never logged


async def test_a_replay_while_a_batch_is_in_flight_is_not_overwritten_by_that_batch(database, app):
    async with receiving() as receiver:
        await add_destination(app, http_destination("siem", receiver, query="action:doc.read", max_batch_events=100))
        first = await store_events(database, events_of("acme", 5))
        async with delivering(database):
            await eventually(lambda: _count(receiver, 5), what="the first 5 events")
            receiver.requests.clear()
            receiver.delay = 1.0  # the next batch stays in flight for a second
            second = await store_events(database, events_of("acme", 5))
            await eventually(lambda: _requests(receiver, 1), what="the second batch in flight")
            await replay_destination(app, LogAppender(), "acme", "siem", after_position=0, since=None, actor=ADMIN)
            receiver.delay = 0.0
            await eventually(lambda: _count(receiver, 15), what="the in-flight batch, then the replay")
            last = await app.fetchval("SELECT position FROM audit_events WHERE event_id = $1::uuid", second[-1])

            async def checkpointed() -> bool:
                return (await state(app, "siem"))["checkpoint"] >= last

            await eventually(checkpointed, what="the replay's checkpoint")
        got = [e["eventId"] for e in delivered_events(receiver)]
        # The batch in flight arrived, but its checkpoint did not overwrite the replay's: everything came again.
        assert got == second + first + second


async def test_a_caught_up_webhook_is_woken_by_the_evaluation_not_its_next_poll(database, app):
    async with receiving() as receiver:
        await add_destination(app, dpb.Destination(name="pager", webhook=dpb.WebhookTarget(url=receiver.url)))
        rule = rules_pb.AlertRule(
            tenant="acme",
            display_name="Deletions",
            enabled=True,
            query="action:doc.delete",
            severity=rules_pb.ALERT_SEVERITY_HIGH,
            destinations=["pager"],
        )
        await create_rule(app, LogAppender(), rule, ADMIN)
        # Destinations poll once an hour here: only the doorbell can bring the alert within the test's wait.
        hourly = dataclasses.replace(FAST, poll_seconds=3600.0)
        async with delivering(database, hourly, alerts=True, doorbell=Doorbell()):
            await asyncio.sleep(0.5)  # every subscription has looked once and waits
            await store_events(database, events_of("acme", 1, action="doc.delete"))
            await eventually(lambda: _requests(receiver, 1), within=30, what="the alert, well before the poll")


async def test_a_webhook_gets_only_the_alerts_of_its_rules_and_passes_over_the_others(database, app):
    async with receiving() as pager, receiving() as other:
        await add_destination(app, dpb.Destination(name="pager", webhook=dpb.WebhookTarget(url=pager.url)))
        await add_destination(app, dpb.Destination(name="other", webhook=dpb.WebhookTarget(url=other.url)))
        for action, destination in (("doc.delete", "pager"), ("doc.share", "other")):
            rule = rules_pb.AlertRule(
                tenant="acme",
                display_name=f"Every {action}",
                enabled=True,
                query=f"action:{action}",
                severity=rules_pb.ALERT_SEVERITY_LOW,
                destinations=[destination],
            )
            await create_rule(app, LogAppender(), rule, ADMIN)
        # The last alerts are the other webhook's: pager's page ends with alerts it passes over.
        await store_events(
            database, [*events_of("acme", 3, action="doc.delete"), *events_of("acme", 4, action="doc.share")]
        )
        async with delivering(database, alerts=True):

            async def both_done() -> bool:
                last = await app.fetchval("SELECT max(seq) FROM alerts")
                states = [await state(app, name) for name in ("pager", "other")]
                return last is not None and all(s["checkpoint"] == last for s in states)

            await eventually(both_done, what="both webhooks' checkpoints at the last alert")
        alerts = {row["id"] for row in await app.fetch("SELECT id::text AS id FROM alerts")}
        assert len(pager.requests) == 3 and len(other.requests) == 4
        assert {r.headers["webhook-id"] for r in [*pager.requests, *other.requests]} == alerts
