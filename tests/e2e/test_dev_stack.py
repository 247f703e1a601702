"""`audit-service dev` as a new user runs it: the README's producer example, then a real grpcurl."""

from __future__ import annotations

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


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_banner_says_how_to_reach_everything(dev_stack):
    banner = dev_stack["log"].read_text()
    assert f"gRPC API   {dev_stack['target']}" in banner
    assert f"nats://127.0.0.1:{dev_stack['ports']['nats']}" in banner
    assert "grpcurl -plaintext" in banner


def test_readme_example_publishes_and_grpcurl_reads_it_back(dev_stack, tmp_path):
    example = tmp_path / "example.py"
    example.write_text(readme_producer_example())
    env = {**os.environ, "AUDIT_NATS_URL": f"nats://127.0.0.1:{dev_stack['ports']['nats']}"}
    published = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=60)
    assert published.returncode == 0, published.stderr
    event_id = re.fullmatch(r"stored as ([0-9a-f-]{36})\n", published.stdout).group(1)
    target = dev_stack["target"]

    services = grpcurl(target, "list").split()
    assert {"audit.v1.AuditService", "grpc.health.v1.Health"} <= set(services)
    description = grpcurl(target, "describe", "audit.v1.AuditService")
    for rpc in ("ListEvents", "GetEvent", "CountEvents", "TailEvents"):
        assert f"rpc {rpc}" in description

    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(grpcurl("-d", '{"filter": {"tenant": "acme"}}', target, "audit.v1.AuditService/ListEvents"))
        if listed.get("events"):
            break
        assert time.monotonic() < deadline, "the published event never showed up"
        time.sleep(0.2)
    newest = listed["events"][0]
    assert newest["event_id"] == event_id
    assert newest["action"] == "api_key.create" and newest["actor"]["email"] == "alice@example.com"
    assert int(newest["position"]) >= 1 and len(newest["hash"]) == 64

    fetched = json.loads(grpcurl("-d", json.dumps({"event_id": event_id}), target, "audit.v1.AuditService/GetEvent"))
    assert fetched["event"] == newest

    health = json.loads(grpcurl(target, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


def test_sigint_stops_every_process_it_started(dev_stack):
    process = dev_stack["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    for port in dev_stack["ports"].values():
        assert not port_is_open("127.0.0.1", port), f"port {port} still open after shutdown"
