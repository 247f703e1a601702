"""NATS over TLS with client certificates: a real nats-server with a tls block (verify: true); the ingest worker
and the API connect with AUDIT_NATS_TLS_* files, the client publishes with its TLS options."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import nats.errors
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_client import connect as connect_publisher
from audit_client import tls_context
from audit_service.config import load_config
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port

from ..certificates import CertificateAuthority
from ..conftest import eventually, serving_api
from ..factories import make_event
from ..tail_helpers import Reader


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "nats")


@pytest.fixture(params=[False, True], ids=["upgrade", "handshake-first"])
def handshake_first(request: pytest.FixtureRequest) -> bool:
    """Whether TLS starts before NATS's greeting (`handshake_first`) or upgrades after it."""
    return request.param


@pytest.fixture
def tls_nats(tmp_path: Path, pki: CertificateAuthority, handshake_first: bool):
    """A nats-server that speaks TLS only and requires a client certificate of `pki`."""
    server_cert = pki.issue("nats-server", server=True)
    config_file = tmp_path / "nats-tls.conf"
    config_file.write_text(
        "tls {\n"
        f'  cert_file: "{server_cert.cert}"\n'
        f'  key_file: "{server_cert.key}"\n'
        f'  ca_file: "{pki.cert}"\n'
        "  verify: true\n"
        f"  handshake_first: {'true' if handshake_first else 'false'}\n"
        "}\n"
    )
    server = NatsServer(tmp_path / "nats", port=free_port(), config_file=config_file)
    server.start()
    yield server
    server.stop()


async def test_service_and_client_publish_and_ingest_through_nats_with_tls(
    service_env, pki, tls_nats, handshake_first, start_worker, owner
):
    url = f"tls://127.0.0.1:{tls_nats.port}"
    service_cert = pki.issue("audit-service", server=False)
    producer_cert = pki.issue("producer", server=False)
    env = {
        **service_env,
        "AUDIT_NATS_URL": url,
        "AUDIT_NATS_TLS_CA_FILE": str(pki.cert),
        "AUDIT_NATS_TLS_CERT_FILE": str(service_cert.cert),
        "AUDIT_NATS_TLS_KEY_FILE": str(service_cert.key),
        "AUDIT_NATS_TLS_HANDSHAKE_FIRST": str(handshake_first).lower(),
    }
    config = load_config(env=env)
    await start_worker(config)

    # The server takes TLS clients with a certificate only: what follows can only have gone through TLS.
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
        await nats.connect(f"nats://127.0.0.1:{tls_nats.port}", allow_reconnect=False, connect_timeout=5)
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
        await nats.connect(
            url,
            tls=tls_context(ca_file=str(pki.cert)),  # no client certificate
            tls_handshake_first=handshake_first,
            allow_reconnect=False,
            connect_timeout=5,
        )

    prefix = config.nats.events_subject_prefix
    async with serving_api(config) as api:
        tail = Reader.on_port(api.port, pb.TailEventsRequest(after_position=0))
        try:
            async with connect_publisher(
                url,
                subject_prefix=prefix,
                tls_ca_file=str(pki.cert),
                tls_cert_file=str(producer_cert.cert),
                tls_key_file=str(producer_cert.key),
                tls_handshake_first=handshake_first,
            ) as publisher:
                first = (await publisher.publish(make_event())).event_id
            context = tls_context(
                ca_file=str(pki.cert), cert_file=str(producer_cert.cert), key_file=str(producer_cert.key)
            )
            async with connect_publisher(
                url, subject_prefix=prefix, tls=context, tls_handshake_first=handshake_first
            ) as publisher:
                second = (await publisher.publish(make_event())).event_id

            async def stored() -> bool:
                return await owner.fetchval("SELECT count(*) FROM audit_events") == 2

            await eventually(stored, what="both events ingested through NATS over TLS")
            # The API's live feed gets the committed announcements over its own TLS connection.
            await tail.until(lambda reader: len(reader.ids) >= 2, what="both events on the tail")
            assert tail.ids == [first, second]
        finally:
            tail.task.cancel()
            await tail.channel.close()
