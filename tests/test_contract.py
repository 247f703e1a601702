"""The contract and the project's own hygiene: generated stubs, buf, compose file, public client surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import audit_client

from .conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_generated_stubs_are_in_sync_with_proto():
    result = run(sys.executable, "tools/gen_protos.py", "--check")
    assert result.returncode == 0, result.stderr


def test_buf_lint_is_clean():
    result = run(str(BIN / "buf"), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_is_clean():
    result = run(str(BIN / "buf"), "format", "-d", "--exit-code")
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_validates_against_the_compose_specification():
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_client_public_surface_is_pinned():
    assert sorted(audit_client.__all__) == [
        "AuditClientError",
        "AuditEvent",
        "Change",
        "EventFilter",
        "EventTail",
        "EventTooLargeError",
        "InvalidEventError",
        "Limits",
        "Outcome",
        "PublishAck",
        "PublishBatchError",
        "PublishError",
        "Publisher",
        "RequestContext",
        "Resource",
        "Subject",
        "SubjectType",
        "SyncPublisher",
        "connect",
        "connect_sync",
        "new_event_id",
        "tail_events",
        "tls_context",
        "validate_event",
    ]
    for name in audit_client.__all__:
        assert getattr(audit_client, name) is not None
