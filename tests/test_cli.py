"""`audit-service` start-up: bad configuration and unreachable dependencies are one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from audit_service.core.signing import generate_private_key_pem
from audit_service.devstack.processes import free_port

from .certificates import CertificateAuthority
from .conftest import REPO_ROOT, source_path


def audit_service(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_service.cli", *args],
        env={"PATH": "/usr/bin:/bin", **source_path(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        ("serve", {}, "AUDIT_DATABASE_URL: is required"),
        ("ingest", {"AUDIT_DATABASE_URL": "mysql://db/audit"}, "AUDIT_DATABASE_URL: expected a postgresql:// URL"),
        ("serve", {"AUDIT_DATABASE_URL": "postgresql://x/y", "AUDIT_GRPC_ADDRESS": "nope"}, "AUDIT_GRPC_ADDRESS"),
        ("ingest", {"AUDIT_DATABASE_URL": "postgresql://x/y", "AUDIT_INGEST_BATCH_SIZE": "-5"}, "BATCH_SIZE"),
        ("migrate", {"AUDIT_NATS_URL": "http://nats:4222"}, "AUDIT_NATS_URL"),
        ("serve", {"AUDIT_DATABASE_URL": "postgresql://x/y"}, "AUDIT_AUTH_JWT_SECRET: set it"),
        ("serve", {"AUDIT_DATABASE_URL": "postgresql://x/y", "AUDIT_AUTH_JWT_SECRET": "short"}, "at least 32"),
        ("serve", {"AUDIT_DATABASE_URL": "postgresql://x/y", "AUDIT_AUTH_DISABLED": "maybe"}, "AUDIT_AUTH_DISABLED"),
        (
            "serve",
            {"AUDIT_DATABASE_URL": "postgresql://x/y", "AUDIT_AUTH_JWT_PUBLIC_KEY_FILE": "/nonexistent.pem"},
            "AUDIT_AUTH_JWT_PUBLIC_KEY_FILE: cannot read",
        ),
        ("token", {}, "--tenant"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_code_2(command, env, message):
    args = ("--tenant", "Not A Tenant", "--subject", "x") if command == "token" else ()
    result = audit_service(command, *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("audit-service: configuration error: ") and message in lines[0]


def test_an_unreachable_database_is_one_line_and_exit_code_1():
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/audit"
    result = audit_service("serve", env={"AUDIT_DATABASE_URL": url, "AUDIT_AUTH_DISABLED": "true"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"audit-service: cannot connect to PostgreSQL at {url}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["verify", "checkpoint", "rebuild-projections"])
def test_an_unreachable_database_is_one_line_for_the_one_shot_commands_too(command, tmp_path):
    """verify, checkpoint and rebuild-projections connected without a guard: a refused connection was a traceback."""
    url = f"postgresql://nobody:pw-1@127.0.0.1:{free_port()}/audit"
    key_file = tmp_path / "checkpoint-key.pem"
    key_file.write_bytes(generate_private_key_pem())
    env = {"AUDIT_DATABASE_URL": url, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file)}
    result = audit_service(command, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "127.0.0.1" in lines[0] and "pw-1" not in lines[0], lines[0]


def test_nats_config_prints_the_permissions_docker_compose_ships():
    result = audit_service("nats-config", "--producer", "producer-acme=acme", env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO_ROOT / "nats-auth.conf").read_text()
    refused = audit_service("nats-config", "--producer", "api=acme", env={})
    assert refused.returncode == 2 and "--producer" in refused.stderr


def test_dev_without_the_devstack_binaries_is_one_line_and_starts_nothing(tmp_path):
    # What a plain install of the service (the production image) looks like to `audit-service dev`: no nats-server
    # beside Python or on PATH, no PostgreSQL binaries.
    assert not any((Path(directory) / "nats-server").exists() for directory in ("/usr/bin", "/bin"))
    (tmp_path / "empty").mkdir()
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from audit_service.cli import main; "
            "sys.executable = sys.argv[1]; sys.exit(main(sys.argv[2:]))",
            str(tmp_path / "elsewhere" / "python"),
            "dev",
            "--data-dir",
            str(data_dir),
        ],
        env={"PATH": "/usr/bin:/bin", "AUDIT_DEV_POSTGRES_BIN": str(tmp_path / "empty")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("audit-service: dev: nats-server and PostgreSQL (no initdb and postgres in ")
    assert "devstack extra" in result.stderr
    assert not data_dir.exists(), "nothing is created or started"


def tls_cases(tmp_path: Path) -> list[tuple[str, dict[str, str], str]]:
    """Bad TLS files, each with the variable its one line must name."""
    authority = CertificateAuthority(tmp_path, "bad-config")
    server, other = authority.issue("api", server=True), authority.issue("other", server=True)
    client = authority.issue("client", server=False)
    grpc_pair = {"AUDIT_GRPC_TLS_CERT_FILE": str(server.cert), "AUDIT_GRPC_TLS_KEY_FILE": str(server.key)}
    nats_pair = {"AUDIT_NATS_TLS_CERT_FILE": str(client.cert), "AUDIT_NATS_TLS_KEY_FILE": str(client.key)}
    return [
        ("serve", {**grpc_pair, "AUDIT_GRPC_TLS_CERT_FILE": "/nonexistent"}, "AUDIT_GRPC_TLS_CERT_FILE: cannot read"),
        ("serve", {**grpc_pair, "AUDIT_GRPC_TLS_KEY_FILE": str(tmp_path)}, "AUDIT_GRPC_TLS_KEY_FILE: cannot read"),
        ("serve", {**grpc_pair, "AUDIT_GRPC_TLS_KEY_FILE": str(other.key)}, "AUDIT_GRPC_TLS_KEY_FILE: does not match"),
        ("serve", {"AUDIT_GRPC_TLS_CERT_FILE": str(server.cert)}, "AUDIT_GRPC_TLS_KEY_FILE: is required"),
        ("serve", {"AUDIT_GRPC_TLS_KEY_FILE": str(server.key)}, "AUDIT_GRPC_TLS_CERT_FILE: is required"),
        ("serve", {**grpc_pair, "AUDIT_GRPC_TLS_CERT_FILE": str(server.key)}, "AUDIT_GRPC_TLS_CERT_FILE: holds no"),
        (
            "serve",
            {**grpc_pair, "AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(server.key)},
            "AUDIT_GRPC_TLS_CLIENT_CA_FILE: holds no",
        ),
        ("serve", {"AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(authority.cert)}, "AUDIT_GRPC_TLS_CLIENT_CA_FILE: needs"),
        ("ingest", {"AUDIT_NATS_TLS_CA_FILE": "/nonexistent.pem"}, "AUDIT_NATS_TLS_CA_FILE: cannot read"),
        ("ingest", {"AUDIT_NATS_TLS_CA_FILE": str(server.key)}, "AUDIT_NATS_TLS_CA_FILE: holds no"),
        ("ingest", {"AUDIT_NATS_TLS_CERT_FILE": str(client.cert)}, "AUDIT_NATS_TLS_KEY_FILE: is required"),
        ("ingest", {**nats_pair, "AUDIT_NATS_TLS_KEY_FILE": str(other.key)}, "AUDIT_NATS_TLS_KEY_FILE: is not the"),
        ("serve", {**nats_pair, "AUDIT_NATS_TLS_KEY_FILE": str(other.key)}, "AUDIT_NATS_TLS_KEY_FILE: is not the"),
    ]


def test_bad_tls_files_are_one_line_naming_the_variable_and_exit_code_2(tmp_path):
    # An unreachable database: a check made after connecting would exit 1 instead.
    base = {"AUDIT_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/audit", "AUDIT_AUTH_DISABLED": "true"}
    for command, env, message in tls_cases(tmp_path):
        result = audit_service(command, env={**base, **env})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (message, result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("audit-service: configuration error: ") and message in lines[0], lines[0]
