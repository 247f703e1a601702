"""grpc.health.v1 of the API follows its dependencies: NOT_SERVING while NATS or PostgreSQL is unreachable,
SERVING again once it is back (real servers stopped and started, real health calls)."""

from __future__ import annotations

from pathlib import Path

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
