"""The gRPC API over TLS and mTLS, through a real grpcurl and real gRPC channels; renewed certificate files are
served to new connections while an open TailEvents stream goes on."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.config import load_config

from ..certificates import CertificateAuthority
from ..conftest import REPO_ROOT, run_cli, serving_api, store_events
from ..factories import make_event
from ..tail_helpers import Reader

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Runs grpcurl without blocking the loop the in-process API serves on; returns (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "first")


def tls_env(service_env: dict[str, str], server, client_ca: Path | None = None) -> dict[str, str]:
    env = {**service_env, "AUDIT_GRPC_TLS_CERT_FILE": str(server.cert), "AUDIT_GRPC_TLS_KEY_FILE": str(server.key)}
    if client_ca is not None:
        env["AUDIT_GRPC_TLS_CLIENT_CA_FILE"] = str(client_ca)
    return env


async def test_grpcurl_lists_and_calls_over_tls_with_the_ca(service_env, database, authority):
    server_cert = authority.issue("api", server=True)
    ids = await store_events(database, [make_event() for _ in range(3)])
    async with serving_api(load_config(env=tls_env(service_env, server_cert))) as api:
        target = f"localhost:{api.port}"
        code, listed, stderr = await grpcurl("-cacert", str(authority.cert), target, "list")
        assert code == 0, stderr
        assert {"audit.v1.AuditService", "grpc.health.v1.Health"} <= set(listed.split())

        request = json.dumps({"filter": {"tenant": "acme"}})
        code, out, stderr = await grpcurl(
            "-cacert", str(authority.cert), "-d", request, target, "audit.v1.AuditService/ListEvents"
        )
        assert code == 0, stderr
        assert sorted(event["event_id"] for event in json.loads(out)["events"]) == sorted(ids)

        # The port speaks TLS only, and only with a certificate the client trusts.
        code, _, _ = await grpcurl("-plaintext", target, "list")
        assert code != 0
        code, _, stderr = await grpcurl(target, "list")  # the system's CAs do not know the test CA
        assert code != 0 and "certificate" in stderr.lower()


async def test_mtls_accepts_a_client_certificate_of_its_ca_and_refuses_others(service_env, authority, tmp_path):
    server_cert = authority.issue("api", server=True)
    client_cert = authority.issue("reader", server=False)
    stranger = CertificateAuthority(tmp_path / "other-pki", "other").issue("reader", server=False)
    async with serving_api(load_config(env=tls_env(service_env, server_cert, client_ca=authority.cert))) as api:
        target = f"localhost:{api.port}"
        trust = ("-cacert", str(authority.cert))
        check = (target, "grpc.health.v1.Health/Check")

        code, out, stderr = await grpcurl(*trust, "-cert", str(client_cert.cert), "-key", str(client_cert.key), *check)
        assert code == 0, stderr
        assert json.loads(out) == {"status": "SERVING"}

        code, _, stderr = await grpcurl(*trust, *check)
        assert code != 0, "a client without a certificate was served"
        code, _, stderr = await grpcurl(*trust, "-cert", str(stranger.cert), "-key", str(stranger.key), *check)
        assert code != 0, "a client certificate of another CA was accepted"


def replace_file(source: Path, target: Path) -> None:
    """Puts `source`'s contents at `target` atomically, as cert-manager and certbot renew (write, then rename)."""
    staging = target.with_suffix(target.suffix + ".new")
    staging.write_bytes(source.read_bytes())
    os.replace(staging, target)


async def test_renewed_certificate_files_serve_new_connections_while_an_open_tail_goes_on(
    service_env, authority, tmp_path, start_worker, publisher
):
    served = tmp_path / "served"
    served.mkdir()
    first = authority.issue("api", server=True)
    cert_file, key_file = served / "tls.crt", served / "tls.key"
    replace_file(first.cert, cert_file)
    replace_file(first.key, key_file)
    env = {**service_env, "AUDIT_GRPC_TLS_CERT_FILE": str(cert_file), "AUDIT_GRPC_TLS_KEY_FILE": str(key_file)}
    await start_worker()
    async with serving_api(load_config(env=env)) as api:
        target = f"localhost:{api.port}"
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(authority.cert.read_bytes()))
        tail = Reader(
            audit_service_pb2_grpc.AuditServiceStub(channel).TailEvents(pb.TailEventsRequest(after_position=0)),
            channel=channel,
        )
        try:
            before = [(await publisher.publish(make_event())).event_id for _ in range(3)]
            await tail.until(lambda reader: len(reader.ids) >= 3, what="events before the renewal")

            renewed_ca = CertificateAuthority(tmp_path / "renewed-pki", "renewed")
            renewed = renewed_ca.issue("api", server=True)
            replace_file(renewed.key, key_file)  # key first: a moment where the files disagree is not served
            replace_file(renewed.cert, cert_file)

            health = (target, "grpc.health.v1.Health/Check")
            code, _, stderr = await grpcurl("-cacert", str(renewed_ca.cert), *health)
            assert code == 0, f"the renewed certificate is not served: {stderr}"
            code, _, stderr = await grpcurl("-cacert", str(authority.cert), *health)
            assert code != 0, "a new connection still got the certificate of the old CA"

            after = [(await publisher.publish(make_event())).event_id for _ in range(3)]
            await tail.until(lambda reader: len(reader.ids) >= 6, what="events after the renewal")
            assert tail.ids == before + after
            assert tail.error is None
        finally:
            tail.task.cancel()
            await channel.close()


def readme_openssl_recipe() -> str:
    """The first sh block of the README's TLS section: the openssl commands operators copy."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### TLS") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


async def test_the_readme_openssl_recipe_makes_files_the_api_serves_with_mtls(service_env, tmp_path):
    recipe = readme_openssl_recipe()
    assert "openssl req" in recipe and "subjectAltName" in recipe
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        recipe,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    tls = tmp_path / "tls"
    env = {
        **service_env,
        "AUDIT_GRPC_TLS_CERT_FILE": str(tls / "server.crt"),
        "AUDIT_GRPC_TLS_KEY_FILE": str(tls / "server.key"),
        "AUDIT_GRPC_TLS_CLIENT_CA_FILE": str(tls / "ca.crt"),
    }
    async with serving_api(load_config(env=env)) as api:
        client = ("-cacert", str(tls / "ca.crt"), "-cert", str(tls / "client.crt"), "-key", str(tls / "client.key"))
        code, listed, stderr = await grpcurl(*client, f"localhost:{api.port}", "list")
        assert code == 0, stderr
        assert "audit.v1.AuditService" in listed.split()
        code, _, _ = await grpcurl("-cacert", str(tls / "ca.crt"), f"localhost:{api.port}", "list")
        assert code != 0, "served a client without a certificate"


def test_a_key_file_that_is_not_a_key_stops_serve_with_one_line(service_env, authority):
    """Before: an AttributeError traceback (exit 1), from an except clause naming a class cryptography lacks."""
    server = authority.issue("api", server=True)
    server.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")  # a key file written half-way
    result = run_cli(tls_env(service_env, server), "serve")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audit-service: configuration error: AUDIT_GRPC_TLS_KEY_FILE: ")


async def test_mtls_refuses_an_expired_client_certificate_of_its_ca_and_ignores_silent_clients(service_env, authority):
    """A client certificate signed by the right CA but expired is refused; clients that connect to the TLS port
    and never send a handshake, or speak plaintext gRPC to it, do not keep others from being served."""
    import socket

    server_cert = authority.issue("api", server=True)
    client_cert = authority.issue("reader", server=False)
    expired = authority.issue("old-reader", server=False, expired=True)
    async with serving_api(load_config(env=tls_env(service_env, server_cert, client_ca=authority.cert))) as api:
        target = f"localhost:{api.port}"
        trust = ("-cacert", str(authority.cert))
        check = (target, "grpc.health.v1.Health/Check")
        silent = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(100)]
        try:
            code, _, stderr = await grpcurl(*trust, "-cert", str(expired.cert), "-key", str(expired.key), *check)
            assert code != 0, "an expired client certificate was accepted"
            code, _, _ = await grpcurl("-plaintext", *check)
            assert code != 0, "plaintext served on the TLS port"
            code, out, stderr = await grpcurl(
                *trust, "-cert", str(client_cert.cert), "-key", str(client_cert.key), *check
            )
            assert code == 0, stderr
            assert json.loads(out) == {"status": "SERVING"}
        finally:
            for sock in silent:
                sock.close()
