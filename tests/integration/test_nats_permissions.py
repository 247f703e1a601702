"""The NATS permissions docker-compose.yml ships (nats-auth.conf), enforced by a real nats-server: a producer
publishes its own tenant's events and nothing else, reads no one else's messages, and the real ingest worker and
API do their work as their own users. The rest of the suite runs on the session's server without authentication."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
import yaml
from audit.v1 import alert_rules_pb2, alert_rules_pb2_grpc, audit_service_pb2_grpc, committed_pb2
from audit.v1 import audit_service_pb2 as pb
from audit_client import PublishError
from audit_client import connect as connect_publisher
from audit_service.config import Config, load_config
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port
from audit_service.ingest.streams import alerts_stream_config, ensure_stream
from audit_service.nats_permissions import new_password, password_variable
from audit_service.runtime import run_react
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient

from ..conftest import REPO_ROOT, eventually, serving_api
from ..factories import make_event
from ..tail_helpers import Reader
from .test_reactor import add_rules, deletion, deletions

PASSWORDS = {
    "ingest": "ingest-test-password-4f1c",
    "api": "api-test-password-9b2e",
    "reactor": "reactor-test-password-1a6f",
    "producer-acme": "producer-test-password-77d0",
}
"""The users of the shipped configuration and test passwords for them."""


def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def shipped_nats_config() -> Path:
    """The file docker-compose.yml gives its nats service as configuration."""
    spec = compose()
    (entry,) = spec["services"]["nats"]["configs"]
    command = spec["services"]["nats"]["command"]
    assert command[command.index("--config") + 1] == entry["target"]
    return REPO_ROOT / spec["configs"][entry["source"]]["file"]


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of its own, run with the shipped configuration and the test passwords in its environment."""
    env = {password_variable(user): password for user, password in PASSWORDS.items()}
    server = NatsServer(tmp_path / "nats", port=free_port(), config_file=shipped_nats_config(), env=env)
    server.start()
    yield server
    server.stop()


def url_of(server: NatsServer, user: str, password: str | None = None) -> str:
    return f"nats://{user}:{password or PASSWORDS[user]}@{server.host}:{server.port}"


@pytest.fixture
def as_user(service_env: dict[str, str], names: dict[str, str], secured_nats: NatsServer):
    """The configuration of a service process connecting as `user` (the shipped file is written for the default
    subject and stream prefixes, so this server uses those)."""

    def config(user: str, **extra: str) -> Config:
        env = {key: value for key, value in service_env.items() if key not in names}
        return load_config(env={**env, "AUDIT_NATS_URL": url_of(secured_nats, user), **extra})

    return config


class Connection:
    """A raw NATS connection as one user, keeping the asynchronous errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    def violations(self) -> list[str]:
        return [error for error in self.errors if "permissions violation" in error]


@pytest.fixture
async def connect_as(secured_nats: NatsServer) -> AsyncIterator:
    opened: list[Connection] = []

    async def connect(user: str) -> Connection:
        connection = Connection()
        connection.nc = await nats.connect(
            url_of(secured_nats, user), inbox_prefix=f"_INBOX.{user}", error_cb=connection.on_error
        )
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        await connection.nc.close()


async def stream_messages(ingest: Connection, stream: str) -> int:
    info = await ingest.nc.jetstream().stream_info(stream)
    return info.state.messages


async def settle(*connections: Connection) -> None:
    """Lets the server answer what was sent (errors, deliveries) before the test looks."""
    for connection in connections:
        await connection.nc.flush(timeout=5)
    await asyncio.sleep(0.3)


def test_compose_gives_each_process_its_own_user_and_nats_every_password() -> None:
    services = compose()["services"]
    assert set(services["nats"]["environment"]) == {password_variable(user) for user in PASSWORDS}
    assert services["ingest"]["environment"]["AUDIT_NATS_URL"].startswith("nats://ingest:${AUDIT_NATS_INGEST_PASSWORD")
    assert services["api"]["environment"]["AUDIT_NATS_URL"].startswith("nats://api:${AUDIT_NATS_API_PASSWORD")
    assert services["react"]["environment"]["AUDIT_NATS_URL"].startswith("nats://reactor:${AUDIT_NATS_REACTOR_PASSWORD")
    assert services["react"]["command"] == ["react"]


async def test_the_api_changes_alert_rules_under_its_nats_user_without_a_permissions_violation(as_user, caplog) -> None:
    """The API appends rule-change events itself but publishes nothing on NATS: no violation, and a tail still
    gets the change (from its poll of the log's head)."""
    async with serving_api(as_user("api", AUDIT_TAIL_POLL_SECONDS="0.2")) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest(after_position=0))
        await tail.caught_up()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            rules = alert_rules_pb2_grpc.AlertRuleServiceStub(channel)
            rule = alert_rules_pb2.AlertRule(
                tenant="acme", display_name="Tokens", query="action:api_key.create", severity=3
            )
            created = await rules.CreateAlertRule(alert_rules_pb2.CreateAlertRuleRequest(alert_rule=rule))
        await tail.until(
            lambda reader: [e.resource.id for e in reader.events] == [created.alert_rule.id],
            within=10,
            what="the rule's creation event",
        )
        await tail.close()
    assert not [r for r in caplog.records if "ermissions" in r.getMessage()]


async def test_a_producer_publishes_its_tenant_and_the_worker_and_api_store_and_tail_it(
    as_user, secured_nats, start_worker, owner
) -> None:
    await start_worker(as_user("ingest"))
    # Polling the log's head every 60 s: an event tailed within seconds came through the announcement.
    async with serving_api(as_user("api", AUDIT_TAIL_POLL_SECONDS="60")) as server:
        tail = Reader.on_port(server.port, pb.TailEventsRequest(after_position=0))
        await tail.caught_up()
        async with connect_publisher(url_of(secured_nats, "producer-acme")) as publisher:
            ack = await publisher.publish(make_event("acme"))
        assert ack.stream == "AUDIT_EVENTS"
        await tail.until(lambda reader: ack.event_id in reader.ids, within=10, what="the event, live")
        await tail.close()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            listed = await stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme")))
        assert [event.event_id for event in listed.events] == [ack.event_id]
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 1


async def test_a_producer_cannot_publish_for_another_tenant_nor_announce(
    as_user, secured_nats, start_worker, connect_as
) -> None:
    await start_worker(as_user("ingest"))
    ingest, api = await connect_as("ingest"), await connect_as("api")
    announcements = await api.nc.subscribe("audit.committed.>")
    stored_before = await stream_messages(ingest, "AUDIT_EVENTS")
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    async with connect_publisher(url_of(secured_nats, "producer-acme"), ack_timeout=1, error_cb=on_error) as publisher:
        with pytest.raises(PublishError):
            await publisher.publish(make_event("other"))
    assert errors == ['nats: permissions violation for publish to "audit.events.other"']
    assert await stream_messages(ingest, "AUDIT_EVENTS") == stored_before

    producer = await connect_as("producer-acme")
    forged = committed_pb2.CommittedBatch(prev_position=0, last_position=1_000_000).SerializeToString()
    await producer.nc.publish("audit.committed.acme", forged)
    await producer.nc.publish("audit.committed.other", forged)
    await settle(producer, api)
    assert producer.violations() == [
        'nats: permissions violation for publish to "audit.committed.acme"',
        'nats: permissions violation for publish to "audit.committed.other"',
    ]
    assert announcements.pending_msgs == 0, "a forged announcement reached the API"

    # The same announcement from the ingest workers' user does reach the API: the subscription works.
    await ingest.nc.publish("audit.committed.acme", forged)
    await settle(ingest, api)
    assert announcements.pending_msgs == 1


async def test_a_producer_reads_neither_announcements_nor_the_workers_deliveries(
    as_user, secured_nats, start_worker, connect_as, owner
) -> None:
    producer = await connect_as("producer-acme")
    watched = [
        await producer.nc.subscribe(subject)
        for subject in ("audit.committed.>", "_INBOX.>", "_INBOX.ingest.>", "_INBOX.api.>", "$JS.>", ">")
    ]
    await start_worker(as_user("ingest"))  # its pull inbox is _INBOX.ingest.<random>
    async with connect_publisher(url_of(secured_nats, "producer-acme")) as publisher:
        for _ in range(3):
            await publisher.publish(make_event("acme"))

    async def stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == 3

    await eventually(stored, what="the worker stores the events")  # delivered to it, then announced
    await settle(producer)
    assert [subscription.pending_msgs for subscription in watched] == [0] * len(watched)
    assert len(producer.violations()) == len(watched)


async def test_the_api_user_publishes_nothing(as_user, secured_nats, start_worker, connect_as) -> None:
    await start_worker(as_user("ingest"))
    ingest, api, listener = await connect_as("ingest"), await connect_as("api"), await connect_as("api")
    announcements = await listener.nc.subscribe("audit.committed.>")
    stored_before = await stream_messages(ingest, "AUDIT_EVENTS")
    await api.nc.publish("audit.committed.acme", b"")
    await api.nc.publish("audit.events.acme", make_event("acme").SerializeToString())
    await settle(api, listener)
    assert len(api.violations()) == 2
    assert announcements.pending_msgs == 0
    assert await stream_messages(ingest, "AUDIT_EVENTS") == stored_before


async def test_the_worker_dead_letters_with_its_own_user(as_user, start_worker, connect_as) -> None:
    await start_worker(as_user("ingest"))
    producer, ingest = await connect_as("producer-acme"), await connect_as("ingest")
    ack = await producer.nc.jetstream().publish("audit.events.acme", b"\xff not an event")
    assert ack.stream == "AUDIT_EVENTS"

    async def dead_lettered() -> bool:
        return await stream_messages(ingest, "AUDIT_DEAD") == 1

    await eventually(dead_lettered, what="the message in AUDIT_DEAD")
    assert ingest.violations() == []


async def test_refused_credentials_fail_at_once(secured_nats) -> None:
    for url in (secured_nats.url, url_of(secured_nats, "producer-acme", "wrong-password")):
        async with asyncio.timeout(10):  # nats-py alone would retry them for two minutes
            with pytest.raises(nats.errors.AuthorizationError):
                await connect_publisher(url)


async def test_a_worker_with_a_wrong_password_stops_with_one_line_without_the_password(
    as_user, secured_nats, service_env, names
) -> None:
    env = {key: value for key, value in service_env.items() if key not in names}
    env["AUDIT_NATS_URL"] = url_of(secured_nats, "ingest", "not-the-password")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "ingest"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not-the-password" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"audit-service: cannot connect to NATS at nats://ingest:***@127.0.0.1:{secured_nats.port}: "
        "nats: authorization failed (check the user and password in AUDIT_NATS_URL)"
    )


async def test_a_reply_subject_a_producer_names_makes_jetstream_send_only_its_acknowledgement_there(
    as_user, secured_nats, start_worker, connect_as, owner
) -> None:
    """NATS checks the subject a client publishes to, not the reply subject it names: JetStream sends a producer's
    acknowledgement, as the server, wherever that says, also on audit.committed.<tenant> and another tenant's
    audit.events.<tenant> (README, NATS permissions). What arrives there is JetStream's acknowledgement, never
    content of the producer's choosing: not an announcement the replicas take (they check announced events against
    the log anyway), and in the events stream a message the worker dead-letters without storing anything."""
    await start_worker(as_user("ingest"))
    ingest, api, producer = await connect_as("ingest"), await connect_as("api"), await connect_as("producer-acme")
    heard: list[bytes] = []

    async def hear(msg) -> None:
        heard.append(msg.data)

    await api.nc.subscribe("audit.committed.>", cb=hear)
    dead_before = await stream_messages(ingest, "AUDIT_DEAD")
    await producer.nc.publish("audit.events.acme", b"not an event", reply="audit.committed.globex")
    await producer.nc.publish("audit.events.acme", b"not an event", reply="audit.events.globex")
    await settle(producer, api, ingest)
    assert producer.violations() == []
    assert len(heard) == 1, "what reaches the replicas is JetStream's acknowledgement, and only that"
    assert set(json.loads(heard[0])) <= {"stream", "seq", "domain", "duplicate"}
    with pytest.raises(DecodeError):
        committed_pb2.CommittedBatch.FromString(heard[0])

    async def dead_lettered() -> bool:
        return await stream_messages(ingest, "AUDIT_DEAD") >= dead_before + 3  # the two bodies, and the ack

    await eventually(dead_lettered, what="the two invalid bodies and the acknowledgement dead-lettered")
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 0, "nothing stored, for no tenant"


async def test_the_ingest_user_creates_no_consumer_but_its_own(as_user, secured_nats, start_worker, connect_as) -> None:
    """The finding: allowed $JS.API.CONSUMER.CREATE.AUDIT_EVENTS.>, the ingest user created a push consumer that
    delivered every tenant's events to a producer's inbox (JetStream delivers as the server, to any subject)."""
    await start_worker(as_user("ingest"))  # its own durable consumer is created and pulled as before
    ingest, producer = await connect_as("ingest"), await connect_as("producer-acme")
    spy = await producer.nc.subscribe("_INBOX.producer-acme.spy")
    push = {"deliver_subject": "_INBOX.producer-acme.spy", "ack_policy": "none"}
    for subject, config in (
        ("$JS.API.CONSUMER.CREATE.AUDIT_EVENTS.spy", {"name": "spy", **push}),
        ("$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_EVENTS.spy", {"durable_name": "spy", **push}),
    ):
        request = json.dumps({"stream_name": "AUDIT_EVENTS", "config": config}).encode()
        with pytest.raises(nats.errors.TimeoutError):  # refused: no reply
            await ingest.nc.request(subject, request, timeout=1)
    async with connect_publisher(url_of(secured_nats, "producer-acme")) as publisher:
        await publisher.publish(make_event("acme"))
    await settle(ingest, producer)
    assert len(ingest.violations()) == 2
    assert spy.pending_msgs == 0


@pytest.mark.parametrize("random_part", ["-BvZQs046Ddz8ayunVxMlbzY7WigCh6U", "5MB", "12", "1.5"])
async def test_generated_passwords_are_read_by_nats_server_whatever_their_random_characters(
    tmp_path: Path, random_part: str
) -> None:
    """nats-server parses a $VARIABLE's value as a configuration value: the dev stack once generated the password
    '-BvZQs...' for a user, and nats-server refused to start ("Expected a digit"). A generated password starts
    with a letter, so whatever random characters follow, the server starts and the user logs in with it."""
    password = new_password(random_part)
    env = {password_variable(user): PASSWORDS[user] for user in PASSWORDS} | {
        password_variable("producer-acme"): password
    }
    server = NatsServer(tmp_path / "nats", port=free_port(), config_file=shipped_nats_config(), env=env)
    server.start()
    try:
        nc = await nats.connect(url_of(server, "producer-acme", password), inbox_prefix="_INBOX.producer-acme")
        await nc.close()
    finally:
        server.stop()


async def test_the_ingest_user_reads_its_own_consumers_pending_count_only(as_user, start_worker, connect_as) -> None:
    """What the worker refreshes audit.ingest.pending from."""
    await start_worker(as_user("ingest"))
    ingest = await connect_as("ingest")
    js = ingest.nc.jetstream()
    info = await js.consumer_info("AUDIT_EVENTS", "audit-ingest", timeout=5)
    assert info.num_pending == 0
    assert ingest.violations() == []
    with pytest.raises(nats.errors.TimeoutError):  # refused: the server answers nothing to a denied request
        await js.consumer_info("AUDIT_EVENTS", "someone-else", timeout=1)
    await settle(ingest)
    assert len(ingest.violations()) == 1


async def test_the_reactor_publishes_alerts_only_and_producers_cannot_publish_alerts(
    as_user, start_worker, connect_as
) -> None:
    """The reactor creates its stream and publishes any tenant's alerts, but neither events nor announcements;
    a producer may not forge an alert, even of its own tenant."""
    await start_worker(as_user("ingest"))
    reactor, ingest, producer, api = (
        await connect_as("reactor"),
        await connect_as("ingest"),
        await connect_as("producer-acme"),
        await connect_as("api"),
    )
    announcements = await api.nc.subscribe("audit.committed.>")
    js = reactor.nc.jetstream()
    await ensure_stream(js, alerts_stream_config(load_config(env={}).nats))
    for tenant in ("acme", "globex"):
        ack = await js.publish(f"audit.alerts.{tenant}", b"{}", headers={"Nats-Msg-Id": f"alert-{tenant}"})
        assert ack.stream == "AUDIT_ALERTS"
    events_before = await stream_messages(ingest, "AUDIT_EVENTS")
    await reactor.nc.publish("audit.events.acme", make_event("acme").SerializeToString())
    await reactor.nc.publish("audit.committed.acme", b"")
    await producer.nc.publish("audit.alerts.acme", b"{}")
    await producer.nc.publish("audit.alerts.globex", b"{}")
    await settle(reactor, producer, api)
    assert reactor.violations() == [
        'nats: permissions violation for publish to "audit.events.acme"',
        'nats: permissions violation for publish to "audit.committed.acme"',
    ]
    assert producer.violations() == [
        'nats: permissions violation for publish to "audit.alerts.acme"',
        'nats: permissions violation for publish to "audit.alerts.globex"',
    ]
    assert await stream_messages(ingest, "AUDIT_EVENTS") == events_before
    assert announcements.pending_msgs == 0
    assert (await js.stream_info("AUDIT_ALERTS")).state.messages == 2


async def test_the_react_process_publishes_alerts_under_its_nats_user_without_a_permissions_violation(
    as_user, secured_nats, start_worker, connect_as, app, caplog
) -> None:
    """`audit-service react`'s code path as the shipped `reactor` user: it creates AUDIT_ALERTS and publishes."""
    await start_worker(as_user("ingest"))
    await add_rules(app, deletions("acme"))
    stop = asyncio.Event()
    reacting = asyncio.create_task(run_react(as_user("reactor"), stop))
    try:
        async with connect_publisher(url_of(secured_nats, "producer-acme")) as publisher:
            await publisher.publish(deletion("u-1"))
        reactor = await connect_as("reactor")

        async def published() -> bool:
            assert not reacting.done(), reacting
            with contextlib.suppress(nats.js.errors.NotFoundError):
                return await stream_messages(reactor, "AUDIT_ALERTS") == 1
            return False

        await eventually(published, what="the alert in AUDIT_ALERTS")
    finally:
        stop.set()
        await reacting
    assert not [r for r in caplog.records if "ermissions" in r.getMessage()]
