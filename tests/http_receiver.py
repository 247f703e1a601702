"""A real HTTP(S) receiver for destination and webhook tests: an aiohttp server on loopback that records every
request and answers as the test says (a status, a hang, closed connections)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from audit_service.devstack.processes import free_port


@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    hang: bool = False
    close_connections: bool = False
    delay: float = 0.0
    """Seconds to wait before answering each request."""
    _runner: web.AppRunner | None = None
    _ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        """Listens (again) on its port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl_context).start()

    async def stop(self) -> None:
        """Stops listening: connections are refused until start()."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        receiver = self
        receiver.requests.append(
            Received(request.path, request.query_string, dict(request.headers), await request.read())
        )
        if receiver.delay:
            await asyncio.sleep(receiver.delay)
        if receiver.hang:
            await asyncio.Event().wait()  # never answers; cancelled when the client goes or the server stops
        headers = {"Connection": "close"} if receiver.close_connections else {}
        if receiver.status in (301, 302, 307, 308):
            return web.Response(status=receiver.status, headers={**headers, "Location": "/elsewhere"})
        return web.Response(status=receiver.status, text="x" * 100_000, headers=headers)


@contextlib.asynccontextmanager
async def receiving(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(port=free_port(), _ssl_context=ssl_context)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
