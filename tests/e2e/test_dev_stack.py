"""`audit-service dev` as a new user runs it: the README's producer example, then a real grpcurl."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from audit_client.connection import connect_nats
from audit_service.devstack.postgres import DURABLE_SETTINGS
from audit_service.devstack.processes import free_port, port_is_open
from nats.aio.msg import Msg
from standardwebhooks.webhooks import Webhook

from ..browser import PageProblems, chromium, screenshot
from ..conftest import REPO_ROOT
from ..http_receiver import Received, receiving
from ..pg_settings import settings_in_effect

pytestmark = pytest.mark.slow

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def readme_producer_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Producer example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def start_dev(data_dir: Path, ports: dict[str, int], log_path: Path) -> subprocess.Popen[bytes]:
    """`audit-service dev` on `data_dir` and `ports` (an HTTP port is added when it has none), once it says it is
    ready."""
    ports.setdefault("http", free_port())
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "audit_service.cli",
                "dev",
                "--data-dir",
                str(data_dir),
                "--nats-port",
                str(ports["nats"]),
                "--postgres-port",
                str(ports["postgres"]),
                "--grpc-address",
                f"127.0.0.1:{ports['grpc']}",
                "--http-address",
                f"127.0.0.1:{ports['http']}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while "audit-service dev: ready" not in log_path.read_text()[offset:]:
        assert process.poll() is None, log_path.read_text()[offset:]
        assert time.monotonic() < deadline, log_path.read_text()[offset:]
        time.sleep(0.1)
    return process


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("dev")
    ports = {"nats": free_port(), "postgres": free_port(), "grpc": free_port(), "http": free_port()}
    log_path = data_dir / "dev.log"
    process = start_dev(data_dir / "data", ports, log_path)
    target = f"127.0.0.1:{ports['grpc']}"
    yield {"process": process, "ports": ports, "log": log_path, "target": target, "data": data_dir / "data"}
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def printed_token(dev_stack) -> str:
    return re.search(r"export AUDIT_TOKEN=(\S+)", dev_stack["log"].read_text()).group(1)


def printed_alerts_url(dev_stack) -> str:
    return re.search(r"may subscribe to them:\n  (\S+)", dev_stack["log"].read_text()).group(1)


def printed_nats_url(dev_stack) -> str:
    return re.search(r"export AUDIT_NATS_URL=(\S+)", dev_stack["log"].read_text()).group(1)


def test_the_banner_says_how_to_reach_everything(dev_stack):
    banner = dev_stack["log"].read_text()
    assert f"gRPC API   {dev_stack['target']}" in banner
    assert (
        f"HTTP API   http://127.0.0.1:{dev_stack['ports']['http']}  (Connect and gRPC-Web; the console at /)" in banner
    )
    token = printed_token(dev_stack)
    assert (
        "console (the Audit Logs page, signed in with the admin token above):\n"
        f"  http://127.0.0.1:{dev_stack['ports']['http']}/#token={token}\n"
    ) in banner
    assert f"nats://127.0.0.1:{dev_stack['ports']['nats']}" in banner
    assert "grpcurl -plaintext" in banner
    assert re.search(r"admin token for tenant 'acme'.*\n  export AUDIT_TOKEN=\S+\n", banner)
    passwords = json.loads((dev_stack["data"] / "nats-passwords.json").read_text())
    producer_url = f"nats://producer-acme:{passwords['producer-acme']}@127.0.0.1:{dev_stack['ports']['nats']}"
    assert re.search(
        rf"producer credentials for tenant 'acme' \(may publish to audit.events.acme only.*\n"
        rf"  export AUDIT_NATS_URL={re.escape(producer_url)}\n",
        banner,
    )
    assert banner.count(passwords["producer-acme"]) == 1
    alerts_url = f"nats://alerts-acme:{passwords['alerts-acme']}@127.0.0.1:{dev_stack['ports']['nats']}"
    assert f"published on audit.alerts.acme; this user may subscribe to them:\n  {alerts_url}\n" in banner
    # A local stack: destinations may point at a receiver on this machine or its network.
    assert (
        "  destinations may point at loopback and private networks: AUDIT_DESTINATIONS_ALLOW_PRIVATE=true\n" in banner
    )
    for user in ("ingest", "api", "reactor"):  # the service's own credentials are never printed
        assert passwords[user] not in banner


def test_the_dev_process_serves_metrics_and_probes_where_the_banner_says(dev_stack):
    base = re.search(r"  metrics    (http://127\.0\.0\.1:\d+)/metrics  \(probes: ", dev_stack["log"].read_text()).group(
        1
    )
    expected = [
        "api.nats: ok",
        "api.postgres: ok",
        "api.serving: ok",
        "ingest.consumer: ok",
        "ingest.nats: ok",
        "ingest.postgres: ok",
        "react.evaluating: ok",
        "react.postgres: ok",
    ]
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
                checks = response.read().decode().splitlines()
        except urllib.error.HTTPError:  # 503 until the first PostgreSQL checks have run
            checks = []
        if checks == expected:  # the reactor's checks join once it has started, after the banner
            break
        assert time.monotonic() < deadline, checks
        time.sleep(0.2)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        assert b"process_cpu_seconds_total" in response.read()


def test_without_credentials_the_readme_example_is_refused_at_once(dev_stack, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(readme_producer_example())
    env = {**os.environ, "AUDIT_NATS_URL": f"nats://127.0.0.1:{dev_stack['ports']['nats']}"}
    refused = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=30)
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == "nats.errors.AuthorizationError: nats: authorization failed"


def test_readme_example_publishes_and_grpcurl_reads_it_back(dev_stack, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(readme_producer_example())
    env = {**os.environ, "AUDIT_NATS_URL": printed_nats_url(dev_stack)}
    published = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=60)
    assert published.returncode == 0, published.stderr
    event_id = re.fullmatch(r"stored as ([0-9a-f-]{36})\n", published.stdout).group(1)
    target = dev_stack["target"]

    services = grpcurl(target, "list").stdout.split()  # reflection and health need no token
    assert {"audit.v1.AuditService", "grpc.health.v1.Health"} <= set(services)
    description = grpcurl(target, "describe", "audit.v1.AuditService").stdout
    for rpc in ("ListEvents", "GetEvent", "CountEvents", "TailEvents"):
        assert f"rpc {rpc}" in description

    refused = grpcurl("-d", "{}", target, "audit.v1.AuditService/ListEvents", check=False)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    bearer = ("-H", f"authorization: Bearer {printed_token(dev_stack)}")

    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(
            grpcurl(
                *bearer,
                "-d",
                '{"filter": {"query": "action:api_key.* actor:alice@example.com -resource.type:secret"}}',
                target,
                "audit.v1.AuditService/ListEvents",
            ).stdout
        )
        if listed.get("events"):
            break
        assert time.monotonic() < deadline, "the published event never showed up"
        time.sleep(0.2)
    newest = listed["events"][0]
    assert newest["event_id"] == event_id
    assert newest["action"] == "api_key.create" and newest["actor"]["email"] == "alice@example.com"
    assert int(newest["position"]) >= 1 and len(newest["hash"]) == 64

    excluded = json.loads(
        grpcurl(
            *bearer, "-d", '{"filter": {"query": "-action:api_key.*"}}', target, "audit.v1.AuditService/ListEvents"
        ).stdout
    )
    assert event_id not in {event["event_id"] for event in excluded.get("events", [])}

    occurred = datetime.datetime.fromisoformat(newest["occurred_at"].replace("Z", "+00:00"))
    day = occurred.replace(hour=0, minute=0, second=0, microsecond=0)
    count_request = {
        "filter": {"start_time": day.isoformat(), "end_time": (day + datetime.timedelta(days=1)).isoformat()},
        "interval": "3600s",
        "group_by": "GROUP_BY_ACTION",
    }
    counted = json.loads(
        grpcurl(*bearer, "-d", json.dumps(count_request), target, "audit.v1.AuditService/CountEvents").stdout
    )
    assert int(counted["total"]) >= 1 and len(counted["buckets"]) == 24
    hour = counted["buckets"][occurred.hour]
    assert {"key": "api_key.create", "count": hour["count"]} in hour["groups"]
    assert sum(int(bucket.get("count", 0)) for bucket in counted["buckets"]) == int(counted["total"])

    fetched = json.loads(
        grpcurl(*bearer, "-d", json.dumps({"event_id": event_id}), target, "audit.v1.AuditService/GetEvent").stdout
    )
    assert fetched["event"] == newest

    health = json.loads(grpcurl(target, "grpc.health.v1.Health/Check").stdout)
    assert health == {"status": "SERVING"}


async def test_the_printed_console_link_opens_the_audit_logs_page_signed_in_as_the_dev_admin(dev_stack, tmp_path):
    """After the README example's event (the test above): the link of the banner, in a real browser."""
    link = re.search(r"^  (http://127\.0\.0\.1:\d+/#token=\S+)$", dev_stack["log"].read_text(), re.M).group(1)
    async with chromium() as browser:
        page = await browser.new_page()
        problems = PageProblems()
        problems.watch(page)
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(link)
        await page.wait_for_selector("#events tbody tr")
        assert await page.text_content("#caller") == "dev-admin · tenant acme · admin"
        assert "token" not in page.url  # taken from the fragment into the tab's storage, and erased
        assert all("token" not in url for url in requests)
        actions = await page.locator("#events tbody tr td:nth-child(3)").all_text_contents()
        assert "api_key.create" in actions
        await screenshot(page, "dev-stack-console")
        assert problems.errors == []


def test_the_dev_process_runs_the_reactor_alerts_are_listed_with_grpcurl_and_reach_a_webhook(dev_stack, tmp_path):
    target = dev_stack["target"]
    bearer = ("-H", f"authorization: Bearer {printed_token(dev_stack)}")
    example = tmp_path / "example.py"
    example.write_text(readme_producer_example())  # publishes an api_key.create
    env = {**os.environ, "AUDIT_NATS_URL": printed_nats_url(dev_stack)}

    async def set_up_publish_and_hear() -> tuple[str, str, list[Msg], list[Received]]:
        """With a webhook receiver on loopback (the dev stack allows private destinations): a destination for it
        and a rule naming it, made with grpcurl; then the README's example publishes while subscribed to acme's
        alerts as the printed alerts user. Returns the rule's id, the webhook's secret, what NATS and the webhook
        got."""
        async with receiving() as hooks:
            created = json.loads(
                (
                    await asyncio.to_thread(
                        grpcurl,
                        *bearer,
                        "-d",
                        json.dumps({"destination": {"name": "pager", "webhook": {"url": hooks.url}}}),
                        target,
                        "audit.v1.DestinationService/CreateDestination",
                    )
                ).stdout
            )
            rule = json.loads(
                (
                    await asyncio.to_thread(
                        grpcurl,
                        *bearer,
                        "-d",
                        json.dumps(
                            {
                                "template": "new_api_tokens",
                                "overrides": {"destinations": ["pager"]},
                                "override_mask": {"paths": ["destinations"]},
                            }
                        ),
                        target,
                        "audit.v1.AlertRuleService/CreateAlertRuleFromTemplate",
                    )
                ).stdout
            )["alert_rule"]
            assert rule["destinations"] == ["pager"]
            subscriber = await connect_nats(printed_alerts_url(dev_stack))
            try:
                alerts = await subscriber.subscribe("audit.alerts.acme")
                await subscriber.flush()
                published = await asyncio.to_thread(
                    subprocess.run, [sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=60
                )
                assert published.returncode == 0, published.stderr
                heard = [await alerts.next_msg(timeout=30)]
                while alerts.pending_msgs:
                    heard.append(await alerts.next_msg())
            finally:
                await subscriber.close()
            deadline = time.monotonic() + 30
            while not hooks.requests:
                assert time.monotonic() < deadline, "the webhook got no alert"
                await asyncio.sleep(0.1)
            return rule["id"], created["generated_secret"], heard, list(hooks.requests)

    rule_id, secret, heard, hooked = asyncio.run(set_up_publish_and_hear())

    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(
            grpcurl(*bearer, "-d", '{"page_size": 50}', target, "audit.v1.AlertRuleService/ListAlerts").stdout
        )
        alerts = [alert for alert in listed.get("alerts", []) if alert["rule_id"] == rule_id]
        if alerts:
            break
        assert time.monotonic() < deadline, "no alert was raised"
        time.sleep(0.2)
    assert alerts[0]["tenant"] == "acme" and len(alerts[0]["event_positions"]) == 1
    # The same alert on NATS: its id as Nats-Msg-Id, its protobuf JSON as payload.
    [on_nats] = [msg for msg in heard if json.loads(msg.data)["ruleId"] == rule_id]
    assert on_nats.headers["Nats-Msg-Id"] == alerts[0]["id"]
    assert json.loads(on_nats.data)["id"] == alerts[0]["id"]
    assert json.loads(on_nats.data)["message"] == alerts[0]["message"]
    # And at the webhook, signed (Standard Webhooks) with the secret CreateDestination returned.
    [hook] = hooked
    payload = Webhook(secret).verify(hook.body, hook.headers)  # raises on a bad signature
    assert payload["type"] == "audit.alert" and payload["data"]["id"] == alerts[0]["id"] == hook.headers["webhook-id"]


async def test_the_dev_stacks_postgres_runs_with_the_production_settings(dev_stack):
    """The settings docker-compose.yml gives its postgres (DURABLE_SETTINGS, kept equal by the production path's
    test) are in effect on the dev stack's server, so what runs locally is what is deployed."""
    url = f"postgresql://postgres@127.0.0.1:{dev_stack['ports']['postgres']}/postgres"
    assert await settings_in_effect(url, DURABLE_SETTINGS) == DURABLE_SETTINGS


def test_sigint_stops_every_process_it_started(dev_stack):
    process = dev_stack["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    for port in dev_stack["ports"].values():
        assert not port_is_open("127.0.0.1", port), f"port {port} still open after shutdown"


def children(pid: int) -> dict[int, list[str]]:
    """The live child processes of `pid` and their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and command:
            found[int(stat.parent.name)] = [part.decode() for part in command]
    return found


def servers_of(pid: int) -> dict[int, str]:
    """The PostgreSQL and NATS servers a dev stack started: {pid: name}."""
    named = {child: Path(command[0]).name for child, command in children(pid).items()}
    return {child: name for child, name in named.items() if name in ("postgres", "nats-server")}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kill_9_takes_the_servers_down_and_the_next_run_starts_on_the_same_data(tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "dev.log"
    ports = {"nats": free_port(), "postgres": free_port(), "grpc": free_port(), "http": free_port()}
    started: list[subprocess.Popen[bytes]] = []
    left: set[int] = set()
    try:
        started.append(start_dev(data_dir, ports, log_path))
        servers = servers_of(started[-1].pid)
        left |= set(servers)
        assert sorted(servers.values()) == ["nats-server", "postgres"], children(started[-1].pid)

        started[-1].kill()  # SIGKILL: no chance to stop anything
        started[-1].wait()
        deadline = time.monotonic() + 45
        while any(alive(pid) for pid in servers) or any(port_is_open("127.0.0.1", port) for port in ports.values()):
            still = {name: pid for pid, name in servers.items() if alive(pid)}
            assert time.monotonic() < deadline, f"still running 45 s after kill -9 of audit-service dev: {still}"
            time.sleep(0.2)

        started.append(start_dev(data_dir, ports, log_path))  # the same data directory and ports

        # Even when whatever watches the servers dies with it, the next run stops what was left and starts.
        servers = servers_of(started[-1].pid)
        left |= set(servers)
        others = set(children(started[-1].pid)) - set(servers)
        for pid in [started[-1].pid, *others]:
            os.kill(pid, signal.SIGKILL)
        started[-1].wait()
        assert all(alive(pid) for pid in servers), "nothing should have stopped the servers this time"
        started.append(start_dev(data_dir, ports, log_path))
        assert not any(alive(pid) for pid in servers), "the servers left behind are still running"

        started[-1].send_signal(signal.SIGINT)
        assert started[-1].wait(60) == 0
        for port in ports.values():
            assert not port_is_open("127.0.0.1", port), f"port {port} still open after shutdown"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
        for pid in left:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
