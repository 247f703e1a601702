"""AlertRuleService and DestinationService on the HTTP port (Connect), beside AuditService: the same servicers as
the gRPC port, so the same secrets kept back, tenant isolation, admin-only access, validation naming the field and
authentication; called with the Connect Python client and with curl."""

from __future__ import annotations

import json

import pytest
from audit.v1 import alert_rules_pb2 as rules_pb
from audit.v1 import destinations_pb2 as dpb
from audit.v1.alert_rules_connect import AlertRuleServiceClient
from audit.v1.destinations_connect import DestinationServiceClient
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError

from ..conftest import eventually
from . import test_http_connect
from .test_http_connect import Doors, auth_header, curl
from .test_reactor import caught_up, deletion, deletions, publish_all, reacting

doors = test_http_connect.doors
"""The fixture of test_http_connect: both ports of one API process."""

WEBHOOK_URL = "https://hooks.example.com/audit"  # does not resolve here: nothing is delivered


def security_webhook() -> dpb.Destination:
    return dpb.Destination(name="security-webhook", webhook=dpb.WebhookTarget(url=WEBHOOK_URL))


def rule_naming_it() -> rules_pb.AlertRule:
    return rules_pb.AlertRule(
        display_name="Deletions",
        enabled=True,
        query="action:user.delete",
        severity=rules_pb.ALERT_SEVERITY_MEDIUM,
        destinations=["security-webhook"],
    )


async def connect_code(call) -> tuple[Code, str]:
    with pytest.raises(ConnectError) as raised:
        await call
    return raised.value.code, raised.value.message


async def test_an_admin_manages_a_webhook_and_a_rule_naming_it_and_the_secret_never_comes_back(doors: Doors):
    admin = auth_header(doors.token("acme", "u-admin", admin=True))
    async with (
        DestinationServiceClient(doors.url) as destinations,
        AlertRuleServiceClient(doors.url, codec=google_protobuf_json_codec()) as rules,
    ):
        made = await destinations.create_destination(
            dpb.CreateDestinationRequest(destination=security_webhook()), headers=admin
        )
        secret = made.generated_secret
        assert secret.startswith("whsec_")
        created = made.destination
        assert (created.tenant, created.revision, created.has_secret, created.secret) == ("acme", 1, True, "")
        got = await destinations.get_destination(dpb.GetDestinationRequest(name="security-webhook"), headers=admin)
        assert got.destination == created
        assert secret.encode() not in got.SerializeToString()

        rule = (
            await rules.create_alert_rule(rules_pb.CreateAlertRuleRequest(alert_rule=rule_naming_it()), headers=admin)
        ).alert_rule
        assert (rule.tenant, list(rule.destinations)) == ("acme", ["security-webhook"]) and rule.id
        listed = await rules.list_alert_rules(rules_pb.ListAlertRulesRequest(), headers=admin)
        assert list(listed.alert_rules) == [rule]


async def test_other_tenants_non_admins_and_anonymous_callers_get_the_grpc_codes(doors: Doors):
    admin = auth_header(doors.token("acme", "u-admin", admin=True))
    other_admin = auth_header(doors.token("globex", "u-root", admin=True))
    member = auth_header(doors.token("acme", "u-bob"))
    async with DestinationServiceClient(doors.url) as destinations, AlertRuleServiceClient(doors.url) as rules:
        await destinations.create_destination(
            dpb.CreateDestinationRequest(destination=security_webhook()), headers=admin
        )
        rule = (
            await rules.create_alert_rule(rules_pb.CreateAlertRuleRequest(alert_rule=rule_naming_it()), headers=admin)
        ).alert_rule

        get_destination = dpb.GetDestinationRequest(name="security-webhook")
        get_rule = rules_pb.GetAlertRuleRequest(id=rule.id)
        assert (await connect_code(destinations.get_destination(get_destination, headers=other_admin)))[
            0
        ] == Code.NOT_FOUND
        assert (await connect_code(rules.get_alert_rule(get_rule, headers=other_admin)))[0] == Code.NOT_FOUND

        list_destinations = dpb.ListDestinationsRequest()
        list_rules = rules_pb.ListAlertRulesRequest()
        assert (await connect_code(destinations.list_destinations(list_destinations, headers=member)))[
            0
        ] == Code.PERMISSION_DENIED
        assert (await connect_code(rules.list_alert_rules(list_rules, headers=member)))[0] == Code.PERMISSION_DENIED
        assert (await connect_code(destinations.list_destinations(list_destinations)))[0] == Code.UNAUTHENTICATED
        assert (await connect_code(rules.list_alert_rules(list_rules)))[0] == Code.UNAUTHENTICATED

        metadata_url = dpb.Destination(
            name="x", webhook=dpb.WebhookTarget(url="http://169.254.169.254/latest/meta-data/")
        )
        code, message = await connect_code(
            destinations.create_destination(dpb.CreateDestinationRequest(destination=metadata_url), headers=admin)
        )
        assert code == Code.INVALID_ARGUMENT and message.startswith("destination.webhook.url:"), message
        listed = await destinations.list_destinations(list_destinations, headers=admin)
        assert [destination.name for destination in listed.destinations] == ["security-webhook"]


async def test_curl_creates_and_lists_destinations_and_rules_in_json(doors: Doors):
    token = doors.token("acme", "u-admin", admin=True)

    async def call(service: str, method: str, message: dict) -> dict:
        result = await curl(
            f"{doors.url}/audit.v1.{service}/{method}",
            "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {token}",
            body=json.dumps(message).encode(),
        )  # fmt: skip
        assert (result.status, result.content_type) == (200, "application/json"), result.body
        return json.loads(result.body)

    made = await call(
        "DestinationService",
        "CreateDestination",
        {"destination": {"name": "security-webhook", "webhook": {"url": WEBHOOK_URL}}},
    )
    listed = await call("DestinationService", "ListDestinations", {})
    assert listed["destinations"] == [made["destination"]] and made["destination"]["hasSecret"] is True
    assert "secret" not in made["destination"] and made["generatedSecret"] not in json.dumps(listed)

    rule = {
        "displayName": "Deletions",
        "enabled": True,
        "query": "action:user.delete",
        "severity": "ALERT_SEVERITY_MEDIUM",
        "destinations": ["security-webhook"],
    }
    created = await call("AlertRuleService", "CreateAlertRule", {"alertRule": rule})
    rules = await call("AlertRuleService", "ListAlertRules", {})
    assert rules["alertRules"] == [created["alertRule"]]
    assert created["alertRule"]["destinations"] == ["security-webhook"]


async def test_watch_alerts_over_http_receives_an_alert_raised_after_it_caught_up(
    doors: Doors, database, app, publisher, start_worker
):
    await start_worker()
    admin = auth_header(doors.token("acme", "u-admin", admin=True))
    async with AlertRuleServiceClient(doors.url, codec=google_protobuf_json_codec()) as rules:
        rule = deletions()
        rule.ClearField("tenant")  # the caller's
        created = (
            await rules.create_alert_rule(rules_pb.CreateAlertRuleRequest(alert_rule=rule), headers=admin)
        ).alert_rule
        responses = rules.watch_alerts(rules_pb.WatchAlertsRequest(), headers=admin)
        try:
            async for response in responses:
                if response.caught_up:
                    break
            async with reacting(database):
                await publish_all(publisher, app, [deletion("u-3", "globex"), deletion("u-3")])
                await eventually(lambda: caught_up(app), what="the reactor at the log's head")
                async for response in responses:
                    if response.HasField("alert"):
                        break
            assert (response.alert.tenant, response.alert.rule_id) == ("acme", created.id)
            assert response.alert.message.startswith("u-3 deleted ")
        finally:
            await responses.aclose()
