"""`audit-service dev` as a new user runs it: the README's producer example, then a real grpcurl."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_service.devstack.processes import free_port, port_is_open

from ..conftest import REPO_ROOT

pytestmark = pytest.mark.slow

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def readme_producer_example() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Producer example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("dev")
    ports = {"nats": free_port(), "postgres": free_port(), "grpc": free_port()}
    log_path = data_dir / "dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "audit_service.cli",
                "dev",
                "--data-dir",
                str(data_dir / "data"),
                "--nats-port",
                str(ports["nats"]),
                "--postgres-port",
                str(ports["postgres"]),
                "--grpc-address",
                f"127.0.0.1:{ports['grpc']}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while "audit-service dev: ready" not in log_path.read_text():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    yield {"process": process, "ports": ports, "log": log_path, "target": f"127.0.0.1:{ports['grpc']}"}
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


def test_the_banner_says_how_to_reach_everything(dev_stack):
    banner = dev_stack["log"].read_text()
    assert f"gRPC API   {dev_stack['target']}" in banner
    assert f"nats://127.0.0.1:{dev_stack['ports']['nats']}" in banner
    assert "grpcurl -plaintext" in banner
    assert re.search(r"admin token for tenant 'acme'.*\n  export AUDIT_TOKEN=\S+\n", banner)


def test_readme_example_publishes_and_grpcurl_reads_it_back(dev_stack, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(readme_producer_example())
    env = {**os.environ, "AUDIT_NATS_URL": f"nats://127.0.0.1:{dev_stack['ports']['nats']}"}
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


def test_sigint_stops_every_process_it_started(dev_stack):
    process = dev_stack["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    for port in dev_stack["ports"].values():
        assert not port_is_open("127.0.0.1", port), f"port {port} still open after shutdown"
