"""grpc.health.v1 of the API follows its dependencies: NOT_SERVING while NATS or PostgreSQL is unreachable,
SERVING again once it is back (real servers stopped and started, real health calls)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc
from audit_service.api.server import SERVICE_NAME
from audit_service.config import load_config
from audit_service.devstack.nats import NatsServer
from audit_service.devstack.processes import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import eventually, serving_api

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST_CHECKS = {"AUDIT_HEALTH_CHECK_INTERVAL_SECONDS": "0.2", "AUDIT_HEALTH_CHECK_TIMEOUT_SECONDS": "2"}


@pytest.fixture
def own_nats(tmp_path: Path):
    """A NATS server of this test alone, so that it can be stopped."""
    server = NatsServer(tmp_path / "nats", port=free_port())
    server.start()
    yield server
    server.stop()


class HealthProbe:
    """grpc.health.v1.Health/Check of "" and of AuditService, as a Kubernetes readiness probe asks it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = health_pb2_grpc.HealthStub(channel)

    async def statuses(self) -> set[int]:
        return {
            (await self.stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)).status
            for service in ("", SERVICE_NAME)
        }

    async def becomes(self, status: int, what: str) -> None:
        async def reached() -> bool:
            return await self.statuses() == {status}

        await eventually(reached, what=what)


async def test_health_is_not_serving_while_nats_is_down_and_serving_when_it_is_back(service_env, own_nats):
    config = load_config(env={**service_env, **FAST_CHECKS, "AUDIT_NATS_URL": own_nats.url})
    async with serving_api(config) as api, grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        probe = HealthProbe(channel)
        assert await probe.statuses() == {SERVING}

        own_nats.stop()
        await probe.becomes(NOT_SERVING, "NOT_SERVING while NATS is down")
        # The check never holds up RPCs: reads that need only PostgreSQL are still answered.
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        response = await stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme")), timeout=10)
        assert list(response.events) == []

        own_nats.start()
        await probe.becomes(SERVING, "SERVING once NATS is back")


async def test_health_is_not_serving_while_postgres_refuses_and_serving_when_it_accepts_again(
    service_env, database_outage
):
    config = load_config(env={**service_env, **FAST_CHECKS})
    async with serving_api(config) as api, grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        probe = HealthProbe(channel)
        assert await probe.statuses() == {SERVING}
        async with database_outage():
            await probe.becomes(NOT_SERVING, "NOT_SERVING while PostgreSQL refuses the service")
        await probe.becomes(SERVING, "SERVING once PostgreSQL accepts the service again")


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can freeze: connections stay open and new ones are accepted, but no byte
    goes through (a database host that hangs, a firewall that drops packets)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = host, port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for pump in (self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)):
            task = asyncio.create_task(pump)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc_info: object) -> None:
        self.flowing.set()
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_health_is_not_serving_while_postgres_hangs_and_rpcs_are_answered_meanwhile(service_env, database):
    """PostgreSQL accepts TCP and never answers: the health check's own timeout makes the API NOT_SERVING (health
    calls are answered all along), an RPC that needs the database is answered with an error once its query
    timeout passes rather than hanging, and all is SERVING again once the database answers."""
    parts = urlsplit(database.app_url)
    proxy = FreezableProxy(parts.hostname, parts.port)
    async with proxy as port:
        url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
        env = {**service_env, **FAST_CHECKS, "AUDIT_DATABASE_URL": url, "AUDIT_QUERY_TIMEOUT_SECONDS": "2"}
        config = load_config(env=env)
        async with serving_api(config) as api, grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
            probe = HealthProbe(channel)
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            assert await probe.statuses() == {SERVING}
            proxy.flowing.clear()
            await probe.becomes(NOT_SERVING, "NOT_SERVING while PostgreSQL hangs")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme")), timeout=60)
            # Answered by the server (its query timeout), not by the client's 60 s deadline. (It is the "narrow the
            # filter" answer of a slow query: the server does not tell a hung database from a slow query.)
            assert "the query ran longer" in failed.value.details(), failed.value
            proxy.flowing.set()
            await probe.becomes(SERVING, "SERVING once PostgreSQL answers again")
            response = await stub.ListEvents(pb.ListEventsRequest(filter=pb.EventFilter(tenant="acme")), timeout=60)
            assert list(response.events) == []
