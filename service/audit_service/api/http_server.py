"""The HTTP port's server: uvicorn serving an ASGI application inside the API's event loop, on a socket bound here
(so a bad address is a start-up error naming AUDIT_HTTP_ADDRESS, and port 0 reports the port it got)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from ..config import parse_grpc_address
from ..errors import ConfigError

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers (the process's runtime owns SIGTERM and SIGINT and stops this server
    itself), and saying when it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@dataclass
class RunningHttpServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    """The bound port (useful when the configured port is 0)."""

    async def stop(self) -> None:
        """Stops accepting connections, lets in-flight calls finish within the configured grace, then ends."""
        self.server.should_exit = True
        await self.task


def _listen(address: str) -> socket.socket:
    host, port = parse_grpc_address(address, "AUDIT_HTTP_ADDRESS")
    host = host.removeprefix("[").removesuffix("]")
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        raise ConfigError("AUDIT_HTTP_ADDRESS", f"cannot listen on {address}: {error}") from None


async def start_http_server(address: str, app: Any, *, grace_seconds: float) -> RunningHttpServer:
    """Serves `app` on `address` (host:port) until RunningHttpServer.stop.

    Raises:
        ConfigError: the address cannot be listened on.
    """
    listener = _listen(address)
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app,
        http="h11",
        lifespan="off",
        # The service's own logging (text or JSON) carries uvicorn's records; no access log: each call's status
        # is the client's business, and nothing of a request (its token least of all) belongs in the logs.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=grace_seconds,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[listener]), name="http-server")
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if task.done():
        listener.close()
        task.result()  # raises the start-up error, if any
        raise ConfigError("AUDIT_HTTP_ADDRESS", f"the HTTP server on {address} stopped while starting")
    log.info("HTTP API (Connect, gRPC-Web) listening on %s (port %d, plaintext)", address, port)
    return RunningHttpServer(server, task, port)
