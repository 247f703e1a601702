"""The reactor on real parts: events published on NATS, ingested by the real worker, evaluated by the reactor
(in-process, or `audit-service react` killed with SIGKILL and restarted); alerts stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import grpc
import orjson
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import alert_rules_pb2_grpc, event_pb2
from audit.v1 import audit_service_pb2 as audit_pb
from audit_service.api import alert_watch
from audit_service.api.alert_watch import PAGE_ALERTS
from audit_service.auth.tokens import mint_token
from audit_service.config import TailConfig, load_config
from audit_service.core.alert_rules import compile_rule, rule_to_json
from audit_service.core.reactor import Alert, Reactor
from audit_service.core.records import CHANGE_AFTER_INDEX
from audit_service.core.stored_event import row_to_event
from audit_service.store.alert_rules import Actor, change_event, create_rule, delete_rule, update_rule
from audit_service.store.append import LogAppender
from audit_service.store.pool import create_pool
from audit_service.store.reactor import alerts_page, react, store_step
from google.protobuf import duration_pb2

from ..conftest import (
    JWT_SECRET,
    ServiceProcess,
    bearer,
    eventually,
    serving_api,
    serving_stub,
    serving_with_auth,
    store_events,
)
from ..factories import make_event

pytestmark = pytest.mark.asyncio

ADMIN = Actor("admin-1")


def failed_logins(tenant: str = "acme", count: int = 5, window: int = 600) -> rules_pb.AlertRule:
    return rules_pb.AlertRule(
        tenant=tenant,
        enabled=True,
        display_name="Failed logins",
        query="action:user.login outcome:failure",
        threshold=rules_pb.AlertThreshold(
            count=count, window=duration_pb2.Duration(seconds=window), group_by="actor.id"
        ),
        severity=rules_pb.ALERT_SEVERITY_HIGH,
        message_template="{actor.id}: {count} failed logins",
    )


def deletions(tenant: str = "acme") -> rules_pb.AlertRule:
    return rules_pb.AlertRule(
        tenant=tenant,
        enabled=True,
        display_name="Deletions",
        query="action:user.delete",
        severity=rules_pb.ALERT_SEVERITY_LOW,
        message_template="{actor.id} deleted {resource.id}",
    )


def login(actor: str, tenant: str = "acme") -> event_pb2.AuditEvent:
    return make_event(
        tenant,
        action="user.login",
        outcome=event_pb2.OUTCOME_FAILURE,
        actor=event_pb2.Subject(id=actor, type=event_pb2.SUBJECT_TYPE_USER),
    )


def deletion(actor: str, tenant: str = "acme") -> event_pb2.AuditEvent:
    return make_event(tenant, action="user.delete", actor=event_pb2.Subject(id=actor, type=event_pb2.SUBJECT_TYPE_USER))


async def add_rules(app: asyncpg.Connection, *rules: rules_pb.AlertRule) -> list[rules_pb.AlertRule]:
    return [(await create_rule(app, LogAppender(), rule, ADMIN)).rule for rule in rules]


async def caught_up(app: asyncpg.Connection) -> bool:
    head = await app.fetchval("SELECT last_position FROM audit_log_head")
    position = await app.fetchval("SELECT position FROM reactor_checkpoints WHERE subscription = 'alerts'")
    return position == head


async def publish_all(publisher, app: asyncpg.Connection, events: list[event_pb2.AuditEvent]) -> None:
    before = await app.fetchval("SELECT last_position FROM audit_log_head")
    for event in events:
        await publisher.publish(event)

    async def stored() -> bool:
        return await app.fetchval("SELECT last_position FROM audit_log_head") >= before + len(events)

    await eventually(stored, what=f"{len(events)} events ingested")


@contextlib.asynccontextmanager
async def reacting(database):
    pool = await create_pool(database.app_url, max_size=2)
    stop = asyncio.Event()
    task = asyncio.create_task(react(pool, stop, poll_seconds=0.05))
    try:
        yield task
    finally:
        stop.set()
        await task
        await pool.close()


async def test_ingested_events_raise_alerts_for_rules_with_and_without_threshold(
    database, app, owner, publisher, start_worker
):
    await start_worker()
    failed, deleted, other = await add_rules(app, failed_logins(), deletions(), failed_logins("globex", count=1))
    async with reacting(database):
        await publish_all(
            publisher,
            app,
            [*(login("u-2") for _ in range(4)), *(login("u-1") for _ in range(5)), deletion("u-3")],
        )
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
    rows = await app.fetch("SELECT * FROM alerts ORDER BY rule_id, group_key")
    by_rule = {}
    for row in rows:
        by_rule.setdefault(str(row["rule_id"]), []).append(row)
    assert other.id not in by_rule  # globex's rule never sees acme's events
    [threshold] = by_rule[failed.id]  # u-1's five failures; u-2's four raise nothing
    assert threshold["group_key"] == "u-1"
    assert threshold["message"] == "u-1: 5 failed logins"
    assert threshold["rule_revision"] == 1
    assert threshold["severity"] == rules_pb.ALERT_SEVERITY_HIGH
    positions = threshold["event_positions"]
    assert len(positions) == 5
    events = await app.fetch("SELECT actor_id, action FROM audit_events WHERE position = ANY($1::bigint[])", positions)
    assert {(e["actor_id"], e["action"]) for e in events} == {("u-1", "user.login")}
    [single] = by_rule[deleted.id]
    assert single["message"].startswith("u-3 deleted ")
    # The service role may not change alerts, and the database refuses it even to the owner (as for the log).
    with pytest.raises(asyncpg.PostgresError, match="permission denied"):
        await app.execute("DELETE FROM alerts")
    for statement in ("DELETE FROM alerts", "UPDATE alerts SET message = 'x'", "TRUNCATE alerts"):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await owner.execute(statement)


async def test_a_killed_react_process_resumes_from_its_checkpoint_with_no_alert_lost_or_doubled(
    database, app, publisher, start_worker, service_env, tmp_path
):
    await start_worker()
    await add_rules(app, failed_logins(count=3), deletions(), failed_logins("globex", count=2))
    actors = ["u-1", "u-2", "u-3", "u-4"]
    events = []
    for n in range(240):
        actor, tenant = actors[n % 4], "globex" if n % 5 == 0 else "acme"
        events.append(deletion(actor, tenant) if n % 7 == 0 else login(actor, tenant))
    await publish_all(publisher, app, events)
    head = await app.fetchval("SELECT last_position FROM audit_log_head")

    process = ServiceProcess(
        "react", {**service_env, "AUDIT_REACTOR_PAGE_EVENTS": "1"}, tmp_path / "react.log", "resuming after"
    )
    process.start()
    try:

        async def midway() -> bool:
            assert process.process.poll() is None, process.output()
            position = await app.fetchval("SELECT position FROM reactor_checkpoints")
            return position is not None and position >= 20

        await eventually(midway, what="the reactor midway")
        process.process.kill()  # SIGKILL: no clean shutdown
        process.process.wait()
        stopped_at = await app.fetchval("SELECT position FROM reactor_checkpoints")
        assert stopped_at < head, "the reactor finished before it was killed: nothing was tested"
        process.start()
        await eventually(lambda: caught_up(app), what="the restarted reactor at the log's head")
    finally:
        process.close()

    # One uninterrupted run over the same log, by the same evaluation.
    rules = [compile_rule(r) for r in await _enabled(app)]
    reactor = Reactor(rules)
    rows = await app.fetch("SELECT * FROM audit_events ORDER BY position")
    expected = {(a.id, a.event_positions) for row in rows for a in reactor.feed(row_to_event(row))}
    stored = await app.fetch("SELECT id::text AS id, event_positions FROM alerts")
    assert len(stored) == len(expected) > 10
    assert {(row["id"], tuple(row["event_positions"])) for row in stored} == expected


async def _enabled(app: asyncpg.Connection) -> list[rules_pb.AlertRule]:
    from audit_service.store.alert_rules import enabled_rules

    return await enabled_rules(app)


async def test_list_alerts_is_tenant_scoped_paged_and_for_admins_only(
    database, app, publisher, start_worker, service_env
):
    await start_worker()
    await add_rules(app, deletions("acme"), deletions("globex"))
    async with reacting(database):
        await publish_all(
            publisher, app, [*(deletion(f"a-{n}") for n in range(5)), *(deletion("g-1", "globex") for _ in range(2))]
        )
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
    async with (
        serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)

        def token(tenant: str, *, admin: bool = True) -> str:
            return mint_token(config.auth, subject="u-admin", tenant=tenant, admin=admin, ttl_seconds=600)

        seen, page_token = [], ""
        while True:
            response = await stub.ListAlerts(
                rules_pb.ListAlertsRequest(page_size=2, page_token=page_token), metadata=bearer(token("acme"))
            )
            seen.extend(response.alerts)
            page_token = response.next_page_token
            if not page_token:
                break
        assert [a.message.split(" ")[0] for a in seen] == [f"a-{n}" for n in range(5)]  # in stored order
        assert {a.tenant for a in seen} == {"acme"} and all(len(a.event_positions) == 1 for a in seen)
        assert len({a.id for a in seen}) == 5
        globex = await stub.ListAlerts(rules_pb.ListAlertsRequest(), metadata=bearer(token("globex")))
        assert [a.tenant for a in globex.alerts] == ["globex", "globex"]
        for request, metadata in [
            (rules_pb.ListAlertsRequest(), bearer(token("acme", admin=False))),
            (rules_pb.ListAlertsRequest(tenant="globex"), bearer(token("acme"))),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.ListAlerts(request, metadata=metadata)
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        first = await stub.ListAlerts(rules_pb.ListAlertsRequest(page_size=1), metadata=bearer(token("acme")))
        with pytest.raises(grpc.aio.AioRpcError) as error:  # a token of acme's pages is no use to globex
            await stub.ListAlerts(
                rules_pb.ListAlertsRequest(page_size=1, page_token=first.next_page_token),
                metadata=bearer(token("globex")),
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rules_apply_at_their_log_positions_whenever_the_reactor_starts(database, app):
    """Rule changes and events all committed before the reactor starts: each event is evaluated with the rules
    as of its position (a read model read at start would apply the latest rules to every event)."""
    [rule] = await add_rules(app, deletions())
    [counted] = await add_rules(app, failed_logins(count=2))

    async def change(rule_id: str, paths: list[str], **fields) -> None:
        update = rules_pb.AlertRule(id=rule_id, **fields)
        await update_rule(app, LogAppender(), "acme", update, paths, ADMIN)

    await store_events(database, [deletion("u-1"), deletion("u-2"), login("u-9")])
    await change(rule.id, ["enabled"], enabled=False)
    await change(counted.id, ["display_name"], display_name="Renamed")  # its windows start afresh
    await store_events(database, [deletion("u-3"), deletion("u-4"), login("u-9")])
    await change(rule.id, ["enabled"], enabled=True)
    await store_events(database, [deletion("u-5"), login("u-9")])
    await delete_rule(app, LogAppender(), "acme", rule.id, 0, ADMIN)
    await store_events(database, [deletion("u-6")])
    head = await app.fetchval("SELECT last_position FROM audit_log_head")

    # One run that stops midway (one event per step) and a restart: the alerts of one uninterrupted run.
    pool = await create_pool(database.app_url, max_size=2)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(react(pool, stop, poll_seconds=0.05, page_events=1))

        async def midway() -> bool:
            return (await app.fetchval("SELECT position FROM reactor_checkpoints") or 0) >= head // 2

        await eventually(midway, what="the reactor midway")
        stop.set()
        await task
        async with reacting(database):
            await eventually(lambda: caught_up(app), what="the reactor at the log's head")
    finally:
        await pool.close()
    rows = await app.fetch("SELECT rule_id::text AS rule_id, rule_revision, message FROM alerts ORDER BY seq")
    assert [(row["rule_id"], row["rule_revision"], row["message"].split(" ")[0]) for row in rows] == [
        (rule.id, 1, "u-1"),
        (rule.id, 1, "u-2"),
        (rule.id, 3, "u-5"),
        (counted.id, 2, "u-9:"),
    ]  # none for u-3 and u-4 (the rule was disabled) nor u-6 (deleted)
    logins = await app.fetch("SELECT position FROM audit_events WHERE action = 'user.login' ORDER BY position")
    counted_positions = await app.fetchval("SELECT event_positions FROM alerts WHERE rule_id = $1", counted.id)
    assert counted_positions == [logins[1]["position"], logins[2]["position"]]  # not the failure before the rename


async def store_broken_rule(app: asyncpg.Connection, like: rules_pb.AlertRule) -> rules_pb.AlertRule:
    """A rule stored as if under older validation: its create event is in the log (and its row in the read
    model), but its query no longer compiles."""
    broken = rules_pb.AlertRule()
    broken.CopyFrom(like)
    broken.id, broken.query, broken.revision = "00000000-0000-4000-8000-000000000001", "foo:bar", 1
    content = change_event("create", "acme", broken.id, broken.display_name, ADMIN, None, rule_to_json(broken))
    async with app.transaction():
        result = await LogAppender().append(app, [content])
        await app.execute(
            "INSERT INTO alert_rules (tenant, id, revision, enabled, rule, last_position) "
            "VALUES ($1, $2, 1, true, $3, $4)",
            "acme",
            broken.id,
            orjson.dumps(content[CHANGE_AFTER_INDEX]).decode(),
            result.last_position,
        )
    return broken


async def test_rules_changed_while_running_apply_and_a_broken_rule_is_skipped_once_and_shown_broken(
    database, app, publisher, start_worker, service_env, caplog
):
    await start_worker()
    [good] = await add_rules(app, deletions())
    broken = await store_broken_rule(app, good)
    async with (
        reacting(database),
        serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
        admin = bearer(mint_token(config.auth, subject="u-admin", tenant="acme", admin=True, ttl_seconds=600))
        await publish_all(publisher, app, [deletion("u-1")])
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
        shown = (await stub.GetAlertRule(rules_pb.GetAlertRuleRequest(id=broken.id), metadata=admin)).alert_rule
        assert "query" in shown.broken_reason and "foo" in shown.broken_reason
        listed = await stub.ListAlertRules(rules_pb.ListAlertRulesRequest(), metadata=admin)
        assert {r.id: r.broken_reason for r in listed.alert_rules} == {good.id: "", broken.id: shown.broken_reason}

        [later] = await add_rules(app, failed_logins(count=1))  # created while the reactor runs
        await publish_all(publisher, app, [login("u-2"), deletion("u-3")])
        await eventually(lambda: caught_up(app), what="the reactor at the log's head again")
        # A later revision that compiles clears the reason, and the rule raises alerts again.
        fixed = await stub.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=rules_pb.AlertRule(id=broken.id, query="action:user.delete actor.id:u-4"),
                update_mask={"paths": ["query"]},
            ),
            metadata=admin,
        )
        assert fixed.alert_rule.revision == 2 and not fixed.alert_rule.broken_reason
        await publish_all(publisher, app, [deletion("u-4")])
        await eventually(lambda: caught_up(app), what="the reactor past the fix")
        shown = (await stub.GetAlertRule(rules_pb.GetAlertRuleRequest(id=broken.id), metadata=admin)).alert_rule
        assert shown.revision == 2 and shown.broken_reason == ""
        assert await app.fetchval("SELECT count(*) FROM alert_rule_status") == 0
    rows = await app.fetch("SELECT rule_id::text AS rule_id, message FROM alerts ORDER BY seq")
    assert [(row["rule_id"], row["message"].split(" ")[0]) for row in rows] == [
        (good.id, "u-1"),
        (later.id, "u-2:"),
        (good.id, "u-3"),
        (good.id, "u-4"),
        (broken.id, "u-4"),
    ]
    warnings = [r for r in caplog.records if broken.id in r.getMessage()]
    assert len(warnings) == 1 and "foo" in warnings[0].getMessage()


async def watch_until(call, count: int) -> list[rules_pb.WatchAlertsResponse]:
    """Reads the stream's messages until `count` alerts have arrived (heartbeats and markers included)."""
    messages = []
    while sum(m.HasField("alert") for m in messages) < count:
        message = await call.read()
        assert message is not grpc.aio.EOF, f"the stream ended after {messages}"
        messages.append(message)
    return messages


async def test_watch_alerts_resumes_from_a_cursor_with_exactly_the_missing_alerts_and_goes_live(
    database, app, publisher, start_worker, service_env
):
    await start_worker()
    await add_rules(app, deletions("acme"), deletions("globex"))
    async with reacting(database):
        await publish_all(publisher, app, [*(deletion(f"a-{n}") for n in range(3)), deletion("g-0", "globex")])
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
        async with (
            serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)

            def token(tenant: str, *, admin: bool = True) -> tuple[tuple[str, str]]:
                return bearer(mint_token(config.auth, subject="u-admin", tenant=tenant, admin=admin, ttl_seconds=600))

            everything = rules_pb.WatchAlertsRequest(from_time={"seconds": 0})
            first = stub.WatchAlerts(everything, metadata=token("acme"))
            messages = await watch_until(first, 2)
            first.cancel()  # the client goes away after the second alert
            assert [m.alert.message.split(" ")[0] for m in messages] == ["a-0", "a-1"]
            assert all(m.cursor for m in messages) and len({m.cursor for m in messages}) == 2
            resume_at = messages[-1].cursor

            await publish_all(publisher, app, [deletion("a-3"), deletion("a-4"), deletion("g-1", "globex")])
            await eventually(lambda: caught_up(app), what="the reactor at the log's head again")
            resumed = stub.WatchAlerts(rules_pb.WatchAlertsRequest(after_cursor=resume_at), metadata=token("acme"))
            messages = await watch_until(resumed, 3)
            while not messages[-1].caught_up:
                messages.append(await resumed.read())
            alerts = [m.alert for m in messages if m.HasField("alert")]
            assert [a.message.split(" ")[0] for a in alerts] == ["a-2", "a-3", "a-4"]  # no gap, no repeat
            assert {a.tenant for a in alerts} == {"acme"}
            # Then live: an alert stored now arrives on the same stream, after the caught_up marker.
            await publish_all(publisher, app, [deletion("a-5")])
            [live] = [m.alert for m in await watch_until(resumed, 1) if m.HasField("alert")]
            assert live.message.startswith("a-5 ")
            resumed.cancel()

            # Another tenant's admin sees only its own alerts, and cannot use our cursor.
            globex = stub.WatchAlerts(everything, metadata=token("globex"))
            messages = [await globex.read()]
            while not messages[-1].caught_up:
                messages.append(await globex.read())
            assert [m.alert.message.split(" ")[0] for m in messages if m.HasField("alert")] == ["g-0", "g-1"]
            globex.cancel()
            refused = [
                (rules_pb.WatchAlertsRequest(after_cursor=resume_at), token("globex"), "INVALID_ARGUMENT"),
                (rules_pb.WatchAlertsRequest(after_cursor="garbage!"), token("acme"), "INVALID_ARGUMENT"),
                (rules_pb.WatchAlertsRequest(after_cursor="e30"), token("acme"), "INVALID_ARGUMENT"),
                (everything, token("acme", admin=False), "PERMISSION_DENIED"),
                (rules_pb.WatchAlertsRequest(tenant="globex"), token("acme"), "PERMISSION_DENIED"),
            ]
            for request, metadata, code in refused:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.WatchAlerts(request, metadata=metadata).read()
                assert error.value.code().name == code, (request, error.value.details())
                if code == "INVALID_ARGUMENT":
                    assert error.value.details().startswith("after_cursor: ")


async def test_watch_alerts_ends_with_unavailable_and_a_cursor_when_the_server_stops(database, app, service_env):
    await add_rules(app, deletions("acme"))
    config = load_config(env=service_env)
    server = contextlib.AsyncExitStack()
    running = await server.enter_async_context(serving_api(config))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
        call = stub.WatchAlerts(rules_pb.WatchAlertsRequest(tenant="acme"))
        marker = await call.read()
        assert marker.caught_up and marker.cursor  # a watch from now says where it started at once
        stopping = asyncio.create_task(server.aclose())
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        await stopping
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"after_cursor={marker.cursor}" in error.value.details()


async def test_non_ascii_search_terms_are_evaluated_as_list_events_searches(database, app, service_env):
    """Terms of 2-, 3- and 4-byte UTF-8 characters (and an ASCII term in non-ASCII text), which the in-memory
    matcher cannot fold as PostgreSQL does: the reactor asks the database, so a rule alerts exactly on the events
    ListEvents' search finds."""

    def searching(name: str, **selector) -> rules_pb.AlertRule:
        rule = deletions()
        rule.display_name, rule.message_template = name, name + " {resource.id}"
        if "query" in selector:
            rule.query = selector["query"]
        else:
            rule.filter.search = selector["search"]
        return rule

    two, three, four, ascii_term = await add_rules(
        app,
        searching("two", query="ÉRIC"),
        searching("three", search="日本"),
        searching("four", query="action:user.delete 😀"),
        searching("ascii", query="kelvin"),
    )
    messages = [
        "Éric removed it",
        "eric removed it",
        "日本語 docs",
        "deploy 😀 done",
        "deploy 🙂",
        "\u212aelvin",
        "kelvin",
    ]
    events = []
    for n, message in enumerate(messages):
        event = deletion("u-1")
        event.message, event.resource.id = message, f"r-{n}"
        events.append(event)
    await store_events(database, events)
    async with reacting(database):
        await eventually(lambda: caught_up(app), what="the reactor at the log's head")
    rows = await app.fetch("SELECT message FROM alerts ORDER BY seq")
    raised = sorted(row["message"] for row in rows)
    # What ListEvents finds with each rule's selector, as the database folds case.
    expected = []
    async with serving_stub(service_env) as stub:
        for rule in (two, three, four, ascii_term):
            selector = audit_pb.EventFilter(query=rule.query) if rule.query else rule.filter
            page = await stub.ListEvents(audit_pb.ListEventsRequest(filter=selector, page_size=100))
            expected.extend(f"{rule.display_name} {event.resource.id}" for event in page.events)
    assert raised == sorted(expected)
    # Which is, letter by letter:
    assert raised == sorted(["two r-0", "three r-2", "four r-3", "ascii r-5", "ascii r-6"])
    assert {two.id, three.id, four.id, ascii_term.id} == {
        str(row["rule_id"]) for row in await app.fetch("SELECT rule_id FROM alerts")
    }


async def test_a_watch_reads_the_next_page_of_alerts_only_once_the_previous_one_was_taken(database, app, monkeypatch):
    """A reader that stops reading holds the stream at one page: gRPC's flow control suspends the generator, and the
    generator reads a page only when the previous one has been taken."""
    rule_id = str(uuid.uuid4())
    alerts = [
        Alert("acme", str(uuid.uuid4()), rule_id, 1, 1, "", 0, 0, f"alert {n}", (n + 1,))
        for n in range(PAGE_ALERTS + 5)
    ]
    await store_step(app, alerts, 0, "alerts")
    reads = []

    async def counting_page(*args):
        reads.append(args[2])  # where the page starts
        return await alerts_page(*args)

    monkeypatch.setattr(alert_watch, "alerts_page", counting_page)
    pool = await create_pool(database.app_url, max_size=1)
    try:
        watch = alert_watch.AlertWatch(pool, "acme", "digest", 0, asyncio.Event(), TailConfig())
        async with contextlib.aclosing(watch.responses()) as responses:
            taken = [await anext(responses)]
            assert len(reads) == 1
            while len(taken) < PAGE_ALERTS:
                taken.append(await anext(responses))
            assert len(reads) == 1  # the whole first page is out; the next is not read yet
            taken.append(await anext(responses))
            assert len(reads) == 2
    finally:
        await pool.close()
    assert [t.alert.message for t in taken] == [f"alert {n}" for n in range(PAGE_ALERTS + 1)]
