"""The NATS users and permissions the service ships, rendered without a server (tests/integration/
test_nats_permissions.py runs them on a real nats-server)."""

from __future__ import annotations

import json
import re

import pytest
from audit_service.config import NatsConfig
from audit_service.devstack.stack import dev_nats_passwords
from audit_service.nats_permissions import PASSWORD_PATTERN, password_variable, render, service_users


def by_name(nats: NatsConfig, producers: dict[str, list[str]]) -> dict:
    return {user.name: user for user in service_users(nats, producers)}


def test_each_user_gets_only_what_its_process_does() -> None:
    users = by_name(NatsConfig(), {"producer-acme": ["acme"]})
    assert list(users) == ["ingest", "api", "reactor", "producer-acme"]
    ingest, api, reactor, producer = users["ingest"], users["api"], users["reactor"], users["producer-acme"]
    assert ingest.publish == (
        "$JS.API.STREAM.INFO.AUDIT_EVENTS",
        "$JS.API.STREAM.CREATE.AUDIT_EVENTS",
        "$JS.API.STREAM.INFO.AUDIT_DEAD",
        "$JS.API.STREAM.CREATE.AUDIT_DEAD",
        "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_EVENTS.audit-ingest",
        "$JS.API.CONSUMER.INFO.AUDIT_EVENTS.audit-ingest",
        "$JS.API.CONSUMER.MSG.NEXT.AUDIT_EVENTS.audit-ingest",
        "$JS.ACK.AUDIT_EVENTS.audit-ingest.>",
        "audit.dead.>",
        "audit.committed.>",
    )
    assert ingest.subscribe == ("_INBOX.ingest.>",)
    assert (api.publish, api.subscribe) == ((), ("audit.committed.>",))
    assert reactor.publish == (
        "$JS.API.STREAM.INFO.AUDIT_ALERTS",
        "$JS.API.STREAM.CREATE.AUDIT_ALERTS",
        "audit.alerts.>",
    )
    assert reactor.subscribe == ("_INBOX.reactor.>",)
    assert (producer.publish, producer.subscribe) == (("audit.events.acme",), ("_INBOX.producer-acme.>",))


def test_the_prefixes_are_those_configured() -> None:
    users = by_name(NatsConfig(subject_prefix="corp.audit", stream_prefix="CORP"), {"billing": ["acme", "globex"]})
    assert "$JS.API.CONSUMER.MSG.NEXT.CORP_EVENTS.audit-ingest" in users["ingest"].publish
    ingest = service_users(NatsConfig(), {}, durable="corp-ingest")[0]
    assert "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_EVENTS.corp-ingest" in ingest.publish
    assert {"corp.audit.dead.>", "corp.audit.committed.>"} <= set(users["ingest"].publish)
    assert users["api"].subscribe == ("corp.audit.committed.>",)
    assert users["reactor"].publish[1:] == ("$JS.API.STREAM.CREATE.CORP_ALERTS", "corp.audit.alerts.>")
    assert users["billing"].publish == ("corp.audit.events.acme", "corp.audit.events.globex")
    assert by_name(NatsConfig(), {"platform": ["*"]})["platform"].publish == ("audit.events.*",)


@pytest.mark.parametrize(
    ("producers", "message"),
    [
        ({"a.b": ["acme"]}, "must match"),
        ({"ingest": ["acme"]}, "none of ingest, api, reactor"),
        ({"reactor": ["acme"]}, "none of ingest, api, reactor"),
        ({"billing": []}, "at least one tenant"),
        ({"billing": ["Not A Tenant"]}, "tenant 'Not A Tenant'"),
        ({"billing": ["acme.>"]}, "tenant 'acme.>'"),
        ({"a-b": ["acme"], "a_b": ["acme"]}, "share $AUDIT_NATS_A_B_PASSWORD"),
    ],
)
def test_bad_producers_are_refused(producers: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        service_users(NatsConfig(), producers)


def test_passwords_are_variables_of_nats_servers_environment() -> None:
    assert password_variable("producer-acme") == "AUDIT_NATS_PRODUCER_ACME_PASSWORD"
    text = render(service_users(NatsConfig(), {"producer-acme": ["acme"]}), command="audit-service nats-config")
    assert "password: $AUDIT_NATS_INGEST_PASSWORD\n" in text
    assert "password: $AUDIT_NATS_PRODUCER_ACME_PASSWORD\n" in text
    assert 'publish: {deny: [">"]}' in text  # the API: without it, publishing would be unrestricted


def test_the_dev_stack_keeps_its_passwords_and_replaces_those_nats_server_cannot_read(tmp_path) -> None:
    (tmp_path / "nats-passwords.json").write_text(json.dumps({"ingest": "kt9cZAJkMu1vaqX0O6", "api": "-BvZQs046D"}))
    passwords = dev_nats_passwords(tmp_path, ["ingest", "api", "producer-acme"])
    assert passwords["ingest"] == "kt9cZAJkMu1vaqX0O6"
    assert passwords["api"] != "-BvZQs046D"
    assert all(PASSWORD_PATTERN.fullmatch(password) for password in passwords.values())
    assert dev_nats_passwords(tmp_path, ["ingest", "api", "producer-acme"]) == passwords, "kept once written"


def test_an_alerts_subscriber_hears_its_tenants_alerts_and_publishes_nothing() -> None:
    users = service_users(NatsConfig(), {}, alerts_subscribers={"siem": ["acme", "globex"], "ops": ["*"]})
    siem, ops = users[-2], users[-1]
    assert (siem.name, siem.publish, siem.subscribe) == ("siem", (), ("audit.alerts.acme", "audit.alerts.globex"))
    assert ops.subscribe == ("audit.alerts.*",)
    with pytest.raises(ValueError, match="both a producer and an alerts subscriber"):
        service_users(NatsConfig(), {"siem": ["acme"]}, alerts_subscribers={"siem": ["acme"]})
    with pytest.raises(ValueError, match="none of ingest, api, reactor"):
        service_users(NatsConfig(), {}, alerts_subscribers={"reactor": ["acme"]})
