"""AlertRuleService on a real gRPC server with authentication on, real PostgreSQL: CRUD, each change recorded in
the log (with the caller as actor, before and after), tenant isolation, admins only, validation naming fields,
optimistic concurrency, grpcurl, and the read model rebuilt from the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import alert_rules_pb2_grpc, audit_service_pb2_grpc, destinations_pb2, destinations_pb2_grpc, event_pb2
from audit.v1 import audit_service_pb2 as pb
from audit_client.errors import InvalidEventError
from audit_client.validation import Limits
from audit_service.auth.tokens import mint_token
from audit_service.config import load_config
from audit_service.core.alert_rules import compile_rule
from audit_service.core.decode import decode_event
from audit_service.core.reactor import Alert
from audit_service.store.alert_rules import enabled_rules, rebuild_alert_rules
from audit_service.store.projections import rebuild_projections
from audit_service.store.reactor import store_step
from google.protobuf import duration_pb2, field_mask_pb2

from ..conftest import JWT_SECRET, bearer, eventually, failure, run_cli, serving_api, serving_with_auth
from ..e2e.test_tail_grpcurl import JsonMessages
from ..factories import make_event, stamp
from ..tail_helpers import Reader

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
RULE_ROWS = "SELECT tenant, id, revision, enabled, rule, last_position FROM alert_rules ORDER BY tenant, id"


def failed_logins(**overrides) -> rules_pb.AlertRule:
    rule = rules_pb.AlertRule(
        display_name="Repeated failed logins",
        enabled=True,
        query="action:user.login outcome:failure",
        threshold=rules_pb.AlertThreshold(count=5, window=duration_pb2.Duration(seconds=600), group_by="actor.id"),
        severity=rules_pb.ALERT_SEVERITY_HIGH,
        message_template="{actor.id} failed to log in {count} times in {window}",
        destinations=[],  # naming one needs the webhook to exist (tests/integration/test_destinations.py)
    )
    for name, value in overrides.items():
        setattr(rule, name, value)
    return rule


async def create_webhook(channel: grpc.aio.Channel, token: str, name: str) -> None:
    """A webhook destination of the token's tenant (what a rule's destinations must name)."""
    await destinations_pb2_grpc.DestinationServiceStub(channel).CreateDestination(
        destinations_pb2.CreateDestinationRequest(
            destination=destinations_pb2.Destination(
                name=name, webhook=destinations_pb2.WebhookTarget(url="https://hooks.example.com/audit")
            )
        ),
        metadata=bearer(token),
    )


async def rule_events(secured, token: str) -> list[event_pb2.AuditEvent]:
    page = await secured.stub.ListEvents(
        pb.ListEventsRequest(
            filter=pb.EventFilter(resource_type="audit.alert_rule"), order=pb.ORDER_OLDEST_FIRST, page_size=1000
        ),
        metadata=bearer(token),
    )
    return list(page.events)


async def test_crud_round_trip_records_every_change_in_the_log(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    created = (
        await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    ).alert_rule
    assert created.id and created.tenant == "acme" and created.revision == 1
    assert created.HasField("create_time") and created.query == "action:user.login outcome:failure"

    got = (await rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=created.id), metadata=bearer(admin))).alert_rule
    assert got == created

    change = rules_pb.AlertRule(
        id=created.id, revision=1, display_name="Failed logins", severity=rules_pb.ALERT_SEVERITY_CRITICAL
    )
    updated = (
        await rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name", "severity"])
            ),
            metadata=bearer(admin),
        )
    ).alert_rule
    assert (updated.display_name, updated.severity, updated.revision) == (
        "Failed logins",
        rules_pb.ALERT_SEVERITY_CRITICAL,
        2,
    )
    assert updated.query == created.query and updated.threshold == created.threshold  # untouched by the mask

    listed = await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(), metadata=bearer(admin))
    assert list(listed.alert_rules) == [updated] and not listed.next_page_token

    deleted = (
        await rules.DeleteAlertRule(rules_pb.DeleteAlertRuleRequest(id=created.id, revision=2), metadata=bearer(admin))
    ).alert_rule
    assert deleted == updated
    code, _ = await failure(rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=created.id), metadata=bearer(admin)))
    assert code == grpc.StatusCode.NOT_FOUND

    events = await rule_events(secured, admin)
    assert [e.action for e in events] == [
        "audit.alert_rule.create",
        "audit.alert_rule.update",
        "audit.alert_rule.delete",
    ]
    for event in events:
        assert (event.tenant, event.actor.id, event.resource.type, event.resource.id) == (
            "acme",
            "u-admin",
            "audit.alert_rule",
            created.id,
        )
    create, update, delete = events
    assert not create.change.HasField("before") and create.change.after["display_name"] == "Repeated failed logins"
    assert update.change.before["display_name"] == "Repeated failed logins"
    assert update.change.after["display_name"] == "Failed logins"
    assert update.change.after["severity"] == "ALERT_SEVERITY_CRITICAL"
    assert delete.change.before["display_name"] == "Failed logins" and not delete.change.HasField("after")

    verified = await secured.stub.VerifyChain(pb.VerifyChainRequest(), metadata=bearer(admin))
    assert verified.ok and verified.events_checked == 3


async def test_list_pages_walk_every_rule_once(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    ids = []
    for index in range(5):
        rule = failed_logins(display_name=f"rule {index}")
        ids.append(
            (
                await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=rule), metadata=bearer(admin))
            ).alert_rule.id
        )
    seen, token = [], ""
    while True:
        page = await rules.ListAlertRules(
            rules_pb.ListAlertRulesRequest(page_size=2, page_token=token), metadata=bearer(admin)
        )
        seen.extend(rule.id for rule in page.alert_rules)
        token = page.next_page_token
        if not token:
            break
    assert seen == ids  # creation order, each once
    other_admin = secured.token("globex", "u-admin", admin=True)
    first = await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(page_size=2), metadata=bearer(admin))
    code, details = await failure(
        rules.ListAlertRules(
            rules_pb.ListAlertRulesRequest(page_token=first.next_page_token), metadata=bearer(other_admin)
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("page_token")


async def test_tenants_are_isolated_and_only_admins_manage_rules(secured, rules):
    acme_admin = secured.token("acme", "u-admin", admin=True)
    globex_admin = secured.token("globex", "g-admin", admin=True)
    acme_user = secured.token("acme", "u-alice")
    rule = (
        await rules.CreateAlertRule(
            rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(acme_admin)
        )
    ).alert_rule

    # Another tenant's rule does not exist for globex's admin: NOT_FOUND, never PERMISSION_DENIED.
    for call in (
        rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=rule.id), metadata=bearer(globex_admin)),
        rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=rules_pb.AlertRule(id=rule.id, enabled=False),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
            ),
            metadata=bearer(globex_admin),
        ),
        rules.DeleteAlertRule(rules_pb.DeleteAlertRuleRequest(id=rule.id), metadata=bearer(globex_admin)),
    ):
        assert (await failure(call))[0] == grpc.StatusCode.NOT_FOUND
    listed = await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(), metadata=bearer(globex_admin))
    assert not listed.alert_rules
    # Naming another tenant is refused; a non-admin may do nothing at all.
    code, _ = await failure(
        rules.ListAlertRules(rules_pb.ListAlertRulesRequest(tenant="acme"), metadata=bearer(globex_admin))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    for call in (
        rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(acme_user)),
        rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=rule.id), metadata=bearer(acme_user)),
        rules.ListAlertRules(rules_pb.ListAlertRulesRequest(), metadata=bearer(acme_user)),
        rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(alert_rule=rules_pb.AlertRule(id=rule.id)), metadata=bearer(acme_user)
        ),
        rules.DeleteAlertRule(rules_pb.DeleteAlertRuleRequest(id=rule.id), metadata=bearer(acme_user)),
    ):
        assert (await failure(call))[0] == grpc.StatusCode.PERMISSION_DENIED
    code, _ = await failure(rules.ListAlertRules(rules_pb.ListAlertRulesRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Nothing of that changed the rule or the log.
    still = (await rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=rule.id), metadata=bearer(acme_admin))).alert_rule
    assert still == rule
    assert len(await rule_events(secured, acme_admin)) == 1
    assert not await rule_events(secured, globex_admin)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"display_name": ""}, "alert_rule.display_name"),
        ({"display_name": "x" * 201}, "alert_rule.display_name"),
        ({"query": "nosuchfield:1"}, "alert_rule.query"),
        ({"query": "   "}, "alert_rule.query"),
        ({"filter": pb.EventFilter(actions=["not an action"])}, "alert_rule.filter.actions[0]"),
        ({"filter": pb.EventFilter(tenant="globex")}, "alert_rule.filter.tenant"),
        (
            {"threshold": rules_pb.AlertThreshold(count=0, window=duration_pb2.Duration(seconds=60))},
            "alert_rule.threshold.count",
        ),
        ({"threshold": rules_pb.AlertThreshold(count=5)}, "alert_rule.threshold.window"),
        (
            {"threshold": rules_pb.AlertThreshold(count=5, window=duration_pb2.Duration(seconds=8 * 86400))},
            "alert_rule.threshold.window",
        ),
        (
            {
                "threshold": rules_pb.AlertThreshold(
                    count=5, window=duration_pb2.Duration(seconds=60), group_by="actor.shoe_size"
                )
            },
            "alert_rule.threshold.group_by",
        ),
        ({"message_template": "{actor.nope} did it"}, "alert_rule.message_template"),
        ({"message_template": "{actor.id"}, "alert_rule.message_template"),
        ({"severity": rules_pb.ALERT_SEVERITY_UNSPECIFIED}, "alert_rule.severity"),
        ({"severity": 42}, "alert_rule.severity"),
        ({"destinations": ["Not A Name"]}, "alert_rule.destinations[0]"),
    ],
)
async def test_invalid_rules_are_refused_naming_the_field(secured, rules, overrides, field):
    admin = secured.token("acme", "u-admin", admin=True)
    rule = failed_logins()
    for name, value in overrides.items():
        if isinstance(value, (pb.EventFilter, rules_pb.AlertThreshold)):
            getattr(rule, name).CopyFrom(value)
        elif name == "destinations":
            del rule.destinations[:]
            rule.destinations.extend(value)
        else:
            setattr(rule, name, value)
    code, details = await failure(
        rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=rule), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: "), details
    assert not await rule_events(secured, admin)


async def test_an_update_that_breaks_the_rule_or_names_an_unknown_field_is_refused(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    rule = (
        await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    ).alert_rule
    bad_window = rules_pb.AlertRule(
        id=rule.id, threshold=rules_pb.AlertThreshold(count=3, window=duration_pb2.Duration(seconds=0))
    )
    code, details = await failure(
        rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=bad_window, update_mask=field_mask_pb2.FieldMask(paths=["threshold"])
            ),
            metadata=bearer(admin),
        )
    )
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "alert_rule.threshold.window")
    code, details = await failure(
        rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=rules_pb.AlertRule(id=rule.id), update_mask=field_mask_pb2.FieldMask(paths=["tenant"])
            ),
            metadata=bearer(admin),
        )
    )
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "update_mask")
    assert len(await rule_events(secured, admin)) == 1


async def test_a_stale_revision_is_aborted(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    rule = (
        await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    ).alert_rule
    mask = field_mask_pb2.FieldMask(paths=["enabled"])
    first = rules_pb.UpdateAlertRuleRequest(
        alert_rule=rules_pb.AlertRule(id=rule.id, revision=1, enabled=False), update_mask=mask
    )
    assert (await rules.UpdateAlertRule(first, metadata=bearer(admin))).alert_rule.revision == 2
    code, details = await failure(rules.UpdateAlertRule(first, metadata=bearer(admin)))  # still at revision 1
    assert code == grpc.StatusCode.ABORTED, details
    code, _ = await failure(
        rules.DeleteAlertRule(rules_pb.DeleteAlertRuleRequest(id=rule.id, revision=1), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.ABORTED
    assert [e.action for e in await rule_events(secured, admin)] == [
        "audit.alert_rule.create",
        "audit.alert_rule.update",
    ]


async def test_concurrent_updates_at_one_revision_let_exactly_one_through(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    rule = (
        await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    ).alert_rule
    mask = field_mask_pb2.FieldMask(paths=["display_name"])
    calls = [
        rules.UpdateAlertRule(
            rules_pb.UpdateAlertRuleRequest(
                alert_rule=rules_pb.AlertRule(id=rule.id, revision=1, display_name=f"n{i}"), update_mask=mask
            ),
            metadata=bearer(admin),
        )
        for i in range(6)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    aborted = [r for r in results if isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED]
    assert (len(ok), len(aborted)) == (1, 5)
    assert len(await rule_events(secured, admin)) == 2


async def test_the_read_model_is_rebuilt_from_the_log(secured, rules, owner, database):
    acme = secured.token("acme", "u-admin", admin=True)
    globex = secured.token("globex", "g-admin", admin=True)
    kept = []
    for token, name in ((acme, "a1"), (acme, "a2"), (globex, "g1"), (acme, "a3")):
        kept.append(
            (
                token,
                (
                    await rules.CreateAlertRule(
                        rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins(display_name=name)),
                        metadata=bearer(token),
                    )
                ).alert_rule,
            )
        )
    await rules.UpdateAlertRule(
        rules_pb.UpdateAlertRuleRequest(
            alert_rule=rules_pb.AlertRule(id=kept[0][1].id, filter=pb.EventFilter(actions=["user.delete"])),
            update_mask=field_mask_pb2.FieldMask(paths=["filter"]),
        ),
        metadata=bearer(acme),
    )
    await rules.DeleteAlertRule(rules_pb.DeleteAlertRuleRequest(id=kept[1][1].id), metadata=bearer(acme))
    await rules.UpdateAlertRule(
        rules_pb.UpdateAlertRuleRequest(
            alert_rule=rules_pb.AlertRule(id=kept[2][1].id, enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=bearer(globex),
    )
    online = [tuple(row) for row in await owner.fetch(RULE_ROWS)]
    assert len(online) == 3

    assert [row[3] for row in online] == [True, True, False]  # acme's two, then globex's disabled one
    app = await asyncpg.connect(database.app_url)
    try:
        enabled = await enabled_rules(app)  # what an evaluator loads, as the service role
    finally:
        await app.close()
    assert [r.id for r in enabled] == [kept[0][1].id, kept[3][1].id]
    assert all(compile_rule(r).rule.enabled for r in enabled)
    await owner.execute("DELETE FROM alert_rules")
    assert await rebuild_alert_rules(owner) == 3
    assert [tuple(row) for row in await owner.fetch(RULE_ROWS)] == online

    await owner.execute("UPDATE alert_rules SET enabled = NOT enabled")
    report = await rebuild_projections(owner)
    assert report.alert_rules == 3
    assert [tuple(row) for row in await owner.fetch(RULE_ROWS)] == online
    # And what the API serves from the rebuilt table is what it served before.
    listed = await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(), metadata=bearer(acme))
    assert [r.id for r in listed.alert_rules] == [kept[0][1].id, kept[3][1].id]
    assert listed.alert_rules[0].filter.actions == ["user.delete"] and not listed.alert_rules[0].query


async def test_the_service_role_may_change_rules_but_never_the_log(database, secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    conn = await asyncpg.connect(database.app_url)
    try:
        for statement in ("UPDATE audit_events SET message = 'x'", "DELETE FROM audit_events"):
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(statement)
    finally:
        await conn.close()


def test_producers_cannot_publish_rule_change_events():
    for event in (
        make_event("acme", resource=event_pb2.Resource(type="audit.alert_rule", id="r1")),
        make_event("acme", action="audit.alert_rule.create"),
    ):
        with pytest.raises(InvalidEventError) as error:
            decode_event(stamp(event).SerializeToString(), None, now_seconds=event.occurred_at.seconds, limits=Limits())
        assert error.value.field in ("resource.type", "action")


async def grpcurl(*args: str) -> dict:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_grpcurl_creates_and_lists_rules_through_reflection(service_env):
    async with serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port):
        admin = mint_token(config.auth, subject="u-admin", tenant="acme", admin=True, ttl_seconds=600)
        common = ("-plaintext", "-H", f"authorization: Bearer {admin}")
        rule = {
            "displayName": "Mass deletions",
            "enabled": True,
            "query": "action:user.delete",
            "threshold": {"count": 20, "window": "300s", "groupBy": "actor.id"},
            "severity": "ALERT_SEVERITY_HIGH",
            "messageTemplate": "{actor.id} deleted {count} {resource.type}s",
        }
        created = await grpcurl(
            *common,
            "-d",
            json.dumps({"alertRule": rule}),
            f"127.0.0.1:{port}",
            "audit.v1.AlertRuleService/CreateAlertRule",
        )
        assert created["alert_rule"]["tenant"] == "acme" and created["alert_rule"]["revision"] == "1"
        listed = await grpcurl(*common, "-d", "{}", f"127.0.0.1:{port}", "audit.v1.AlertRuleService/ListAlertRules")
        assert [r["id"] for r in listed["alert_rules"]] == [created["alert_rule"]["id"]]
        assert listed["alert_rules"][0]["threshold"] == {"count": 20, "window": "300s", "group_by": "actor.id"}
        rule_id = created["alert_rule"]["id"]
        # As the README shows: the mask as {"paths": [...]} (grpcurl takes no string form), revisions as strings.
        update = {
            "alert_rule": {"id": rule_id, "revision": "1", "enabled": False},
            "update_mask": {"paths": ["enabled"]},
        }
        updated = await grpcurl(
            *common, "-d", json.dumps(update), f"127.0.0.1:{port}", "audit.v1.AlertRuleService/UpdateAlertRule"
        )
        assert updated["alert_rule"]["revision"] == "2" and "enabled" not in updated["alert_rule"]
        await grpcurl(
            *common,
            "-d",
            json.dumps({"id": rule_id, "revision": "2"}),
            f"127.0.0.1:{port}",
            "audit.v1.AlertRuleService/DeleteAlertRule",
        )
        events = await grpcurl(
            *common,
            "-d",
            json.dumps({"filter": {"resource_type": "audit.alert_rule"}, "order": "ORDER_OLDEST_FIRST"}),
            f"127.0.0.1:{port}",
            "audit.v1.AuditService/ListEvents",
        )
        assert [e["action"] for e in events["events"]] == [
            "audit.alert_rule.create",
            "audit.alert_rule.update",
            "audit.alert_rule.delete",
        ]
        process = await asyncio.create_subprocess_exec(
            GRPCURL, "-plaintext", f"127.0.0.1:{port}", "list", stdout=asyncio.subprocess.PIPE
        )
        services = (await process.communicate())[0].decode().split()
        assert "audit.v1.AlertRuleService" in services
        health = await grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"service": "audit.v1.AlertRuleService"}),
            f"127.0.0.1:{port}",
            "grpc.health.v1.Health/Check",
        )
        assert health["status"] == "SERVING"
        webhook = {"name": "siem", "webhook": {"url": "https://hooks.example.com/audit"}}
        made = await grpcurl(
            *common,
            "-d",
            json.dumps({"destination": webhook}),
            f"127.0.0.1:{port}",
            "audit.v1.DestinationService/CreateDestination",
        )
        assert made["generated_secret"].startswith("whsec_") and made["destination"]["has_secret"] is True
        from_template = {
            "template": "multiple_failed_logins",
            "overrides": {"query": "action:auth.signin outcome:failure", "destinations": ["siem"]},
            "override_mask": {"paths": ["query", "destinations"]},
        }
        made = await grpcurl(
            *common,
            "-d",
            json.dumps(from_template),
            f"127.0.0.1:{port}",
            "audit.v1.AlertRuleService/CreateAlertRuleFromTemplate",
        )
        assert made["alert_rule"]["query"] == "action:auth.signin outcome:failure"
        assert made["alert_rule"]["threshold"]["count"] == 5 and made["alert_rule"]["destinations"] == ["siem"]


async def test_a_live_tail_gets_rule_changes_and_unauthenticated_calls_name_the_tenant(service_env):
    """The API does not announce the events it appends (it publishes nothing on NATS): a tail finds them at its
    next poll of the log's head. With authentication off, requests name the tenant and the actor is recorded."""
    env = service_env | {"AUDIT_TAIL_POLL_SECONDS": "0.2"}
    async with serving_api(load_config(env=env)) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        rules = alert_rules_pb2_grpc.AlertRuleServiceStub(ch)
        reader = Reader(audit_service_pb2_grpc.AuditServiceStub(ch).TailEvents(pb.TailEventsRequest()))
        await reader.until(lambda r: any(response.caught_up for response in r.responses), what="caught_up")
        anonymous = rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins())
        code, details = await failure(rules.CreateAlertRule(anonymous))
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "alert_rule.tenant")
        created = await rules.CreateAlertRule(
            rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins(tenant="acme")), timeout=10
        )
        await reader.until(lambda r: len(r.events) == 1, within=10, what="the rule's creation event")
        event = reader.events[0]
        assert (event.tenant, event.action, event.actor.id) == ("acme", "audit.alert_rule.create", "unauthenticated")
        assert event.resource.id == created.alert_rule.id
        listed = await rules.ListAlertRules(rules_pb.ListAlertRulesRequest(tenant="acme"))
        assert [rule.id for rule in listed.alert_rules] == [created.alert_rule.id]
        await reader.close()


async def test_a_template_creates_a_tuned_rule_recorded_like_any_other(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    templates = await rules.ListAlertRuleTemplates(rules_pb.ListAlertRuleTemplatesRequest(), metadata=bearer(admin))
    assert [t.name for t in templates.templates] == [
        "multiple_failed_logins",
        "mass_deletions",
        "permission_escalations",
        "new_api_tokens",
    ]
    await create_webhook(secured.channel, admin, "siem")
    request = rules_pb.CreateAlertRuleFromTemplateRequest(
        template="mass_deletions",
        overrides=rules_pb.AlertRule(destinations=["siem"], severity=rules_pb.ALERT_SEVERITY_CRITICAL),
        override_mask=field_mask_pb2.FieldMask(paths=["destinations", "severity"]),
    )
    created = (await rules.CreateAlertRuleFromTemplate(request, metadata=bearer(admin))).alert_rule
    assert (created.display_name, created.query) == ("Mass deletions", templates.templates[1].alert_rule.query)
    assert (list(created.destinations), created.severity, created.tenant) == (
        ["siem"],
        rules_pb.ALERT_SEVERITY_CRITICAL,
        "acme",
    )
    got = (await rules.GetAlertRule(rules_pb.GetAlertRuleRequest(id=created.id), metadata=bearer(admin))).alert_rule
    assert got == created
    (event,) = await rule_events(secured, admin)
    assert (event.action, event.actor.id, event.resource.id) == ("audit.alert_rule.create", "u-admin", created.id)

    bad = rules_pb.CreateAlertRuleFromTemplateRequest(
        template="mass_deletions",
        overrides=rules_pb.AlertRule(threshold=rules_pb.AlertThreshold(count=0)),
        override_mask=field_mask_pb2.FieldMask(paths=["threshold"]),
    )
    code, details = await failure(rules.CreateAlertRuleFromTemplate(bad, metadata=bearer(admin)))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "overrides.threshold.count")
    unknown = rules_pb.CreateAlertRuleFromTemplateRequest(template="nope")
    code, details = await failure(rules.CreateAlertRuleFromTemplate(unknown, metadata=bearer(admin)))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "template")
    user = secured.token("acme", "u-alice")
    code, _ = await failure(rules.CreateAlertRuleFromTemplate(request, metadata=bearer(user)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Reading the templates discloses nothing of a tenant: any authenticated caller may, nobody else.
    seen = await rules.ListAlertRuleTemplates(rules_pb.ListAlertRuleTemplatesRequest(), metadata=bearer(user))
    assert seen == templates
    code, _ = await failure(rules.ListAlertRuleTemplates(rules_pb.ListAlertRuleTemplatesRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert len(await rule_events(secured, admin)) == 1


async def test_the_cli_manages_rules_through_the_api(service_env):
    async with serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port):
        token = mint_token(config.auth, subject="u-admin", tenant="acme", admin=True, ttl_seconds=600)
        env = {"AUDIT_TOKEN": token, "AUDIT_API_TARGET": f"127.0.0.1:{port}"}

        async def cli(*args: str):
            return await asyncio.to_thread(run_cli, env, "rules", *args)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await create_webhook(channel, token, "siem")
        made = await cli("create", "--template", "new_api_tokens", "--overrides", '{"destinations": ["siem"]}')
        assert made.returncode == 0, made.stderr
        from_template = json.loads(made.stdout)
        assert from_template["destinations"] == ["siem"] and from_template["display_name"] == "New API tokens"
        rule = {"display_name": "Secrets read", "query": "action:secret.read", "severity": "ALERT_SEVERITY_LOW"}
        made = await cli("create", "--json", json.dumps(rule))
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        listed = await cli("list")
        assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [from_template["id"], created["id"]]
        got = await cli("get", created["id"])
        assert json.loads(got.stdout) == created
        stale = await cli("delete", created["id"], "--revision", "7")
        assert stale.returncode == 1 and stale.stderr.startswith("audit-service rules: ABORTED: ")
        deleted = await cli("delete", created["id"], "--revision", "1")
        assert deleted.returncode == 0, deleted.stderr
        gone = await cli("get", created["id"])
        assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
        bad = await cli("create", "--json", json.dumps(rule | {"message_template": "{nope}"}))
        assert bad.returncode == 1 and "INVALID_ARGUMENT: alert_rule.message_template" in bad.stderr


async def test_the_event_and_the_read_model_commit_together_or_not_at_all(secured, rules, owner):
    """When the read model cannot be written, the change's event is not in the log either (same transaction)."""
    admin = secured.token("acme", "u-admin", admin=True)
    head = await owner.fetchval("SELECT last_position FROM audit_log_head")
    await owner.execute("REVOKE INSERT ON alert_rules FROM audit_service")
    code, details = await failure(
        rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    )
    assert code == grpc.StatusCode.INTERNAL and "Traceback" not in details
    assert await owner.fetchval("SELECT last_position FROM audit_log_head") == head
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0
    await owner.execute("GRANT INSERT ON alert_rules TO audit_service")
    created = await rules.CreateAlertRule(
        rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin)
    )
    assert await owner.fetchval("SELECT last_position FROM audit_log_head") == head + 1
    assert (
        await owner.fetchval("SELECT last_position FROM alert_rules WHERE id = $1", created.alert_rule.id) == head + 1
    )


async def test_a_rules_versions_are_its_resource_history(secured, rules):
    admin = secured.token("acme", "u-admin", admin=True)
    rule = (
        await rules.CreateAlertRule(rules_pb.CreateAlertRuleRequest(alert_rule=failed_logins()), metadata=bearer(admin))
    ).alert_rule
    await rules.UpdateAlertRule(
        rules_pb.UpdateAlertRuleRequest(
            alert_rule=rules_pb.AlertRule(id=rule.id, threshold=failed_logins().threshold, display_name="Logins"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(admin),
    )
    history = await secured.stub.ListResourceHistory(
        pb.ListResourceHistoryRequest(resource_type="audit.alert_rule", resource_id=rule.id), metadata=bearer(admin)
    )
    assert [r.event.action for r in history.revisions] == ["audit.alert_rule.create", "audit.alert_rule.update"]
    changed = {change.path for change in history.revisions[1].changes}
    assert {"display_name", "revision", "update_time"} <= changed and "threshold.count" not in changed


async def test_a_producer_publishing_a_forged_rule_change_is_dead_lettered_and_no_rule_appears(
    publisher, nc, config, start_worker, owner
):
    """The rules' read model is rebuilt from their streams: a producer must not be able to write into them."""
    js = nc.jetstream()
    await start_worker()
    forged_rule = {"id": "0190c0de-0000-7000-8000-000000000001", "display_name": "x", "enabled": True}
    forged = make_event(
        "acme",
        action="audit.alert_rule.create",
        resource=event_pb2.Resource(type="audit.alert_rule", id=forged_rule["id"]),
    )
    forged.change.after.update(forged_rule)
    await publisher.publish(forged)
    sentinel = await publisher.publish(make_event("acme"))

    async def sentinel_stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") >= 1

    await eventually(sentinel_stored, what="the sentinel stored")
    await eventually(lambda: _dead_letters(js, config.nats.dead_stream, 1), what="the forged rule change dead-lettered")
    assert [row[0] for row in await owner.fetch("SELECT event_id::text FROM audit_events")] == [sentinel.event_id]
    dead = await js.get_msg(config.nats.dead_stream, 1)
    assert (dead.headers["Audit-Dead-Reason"], dead.headers["Audit-Dead-Field"]) == ("invalid_field", "resource.type")
    await rebuild_projections(owner)
    assert await owner.fetchval("SELECT count(*) FROM alert_rules") == 0


async def _dead_letters(js, stream: str, n: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= n


async def test_grpcurl_watches_alerts_as_json(service_env, app):
    alert = Alert(
        tenant="acme",
        id=str(uuid.uuid4()),
        rule_id=str(uuid.uuid4()),
        rule_revision=1,
        severity=rules_pb.ALERT_SEVERITY_HIGH,
        group_key="u-1",
        window_start=1_700_000_000_000_000,
        window_end=1_700_000_001_000_000,
        message="u-1 deleted 20 things",
        event_positions=(1, 2),
    )
    await store_step(app, [alert], 0, "alerts")
    async with serving_with_auth(service_env, {"AUDIT_AUTH_JWT_SECRET": JWT_SECRET}) as (config, port):
        admin = mint_token(config.auth, subject="u-admin", tenant="acme", admin=True, ttl_seconds=600)
        process = await asyncio.create_subprocess_exec(
            GRPCURL,
            "-plaintext",
            "-H",
            f"authorization: Bearer {admin}",
            "-d",
            '{"from_time": "1970-01-01T00:00:00Z"}',
            f"127.0.0.1:{port}",
            "audit.v1.AlertRuleService/WatchAlerts",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            printed = JsonMessages(process)
            await printed.until(lambda messages: len(messages) >= 2, what="the alert and the caught_up marker")
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    first, marker = printed.messages[:2]
    assert first["alert"]["id"] == alert.id and first["alert"]["event_positions"] == ["1", "2"]
    assert first["alert"]["severity"] == "ALERT_SEVERITY_HIGH" and first["cursor"]
    assert marker["caught_up"] is True and marker["cursor"] == first["cursor"]
