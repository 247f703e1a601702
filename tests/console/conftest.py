"""Fixtures of the console's browser tests (tests/browser.py has the harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from audit.v1 import audit_service_pb2_grpc
from audit_client.publisher import Publisher
from audit_service.config import load_config
from playwright.async_api import Browser, expect

from ..browser import Console, chromium
from ..conftest import JWT_SECRET, RunningWorker, serving_api

# Playwright's assertions wait up to 5 s by default: a 2-core CI machine running the rest of the suite can take
# longer to get an event through NATS, the worker and the page. They pass as soon as the page is right; only a
# failure waits this long. (The live latency test measures its own bound.)
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def console(
    service_env: dict[str, str],
    browser: Browser,
    publisher: Publisher,
    start_worker: Callable[..., Awaitable[RunningWorker]],
) -> AsyncIterator[Console]:
    """The API with authentication on and its HTTP port, an ingest worker, and the browser."""
    env = {key: value for key, value in service_env.items() if key != "AUDIT_AUTH_DISABLED"} | {
        "AUDIT_AUTH_JWT_SECRET": JWT_SECRET,
        "AUDIT_HTTP_ADDRESS": "127.0.0.1:0",
    }
    config = load_config(env=env)
    await start_worker()
    async with serving_api(config) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.http is not None
        running = Console(
            url=f"http://127.0.0.1:{server.http.port}",
            auth=config.auth,
            grpc=audit_service_pb2_grpc.AuditServiceStub(channel),
            channel=channel,
            publisher=publisher,
            browser=browser,
        )
        try:
            yield running
        finally:
            await running.close()
