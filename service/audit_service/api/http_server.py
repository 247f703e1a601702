"""The HTTP port's server: uvicorn serving an ASGI application inside the API's event loop, on a socket bound here
(so a bad address is a start-up error naming AUDIT_HTTP_ADDRESS, and port 0 reports the port it got), with the
gRPC port's TLS files when it has them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from ..config import TlsConfig, parse_grpc_address
from ..errors import ConfigError
from .tls import CertificateFiles, CertificatePair

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


class FollowingTlsContext:
    """TLS of the HTTP port from the gRPC port's files (AUDIT_GRPC_TLS_*), followed as the gRPC port follows them:
    each handshake checks whether they changed and, when they did, is served the renewed certificate and key.

    Raises (constructor):
        ConfigError: the files cannot be read or do not fit together.
    """

    def __init__(self, config: TlsConfig) -> None:
        self._files = CertificateFiles(config, label="HTTP TLS")
        self._current = self._context(self._files.current)
        # The listening context: its callback hands each handshake the context of the current files. (A renewed
        # client CA applies from the next start: OpenSSL takes only the certificate and key of a swapped context.)
        self.context = self._context(self._files.current)
        self.context.sni_callback = self._select

    @staticmethod
    def _context(pair: CertificatePair) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain and key only from files: the checked contents, in a private directory for the moment.
        with tempfile.TemporaryDirectory(prefix="audit-http-tls-") as directory:
            cert_file, key_file = f"{directory}/tls.crt", f"{directory}/tls.key"
            with open(cert_file, "wb") as file:
                file.write(pair.cert_chain)
            with open(key_file, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as file:
                file.write(pair.private_key)
            context.load_cert_chain(cert_file, key_file)
        if pair.client_ca is not None:
            context.load_verify_locations(cadata=pair.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _select(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._files.fetch() is not None:  # the files changed, and the new ones were checked
            try:
                self._current = self._context(self._files.current)
            except (ssl.SSLError, OSError) as error:
                log.warning("HTTP TLS: keeping the certificate in use: %s", error)
        connection.context = self._current


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
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as error:
        raise ConfigError("AUDIT_HTTP_ADDRESS", f"cannot listen on {address}: {error}") from None
    # Nagle off, as asyncio sets it on the sockets uvicorn binds itself (it skips these: create_server's have proto
    # 0); the accepted connections inherit it. With it on, an answer's last small write (the chunked body's end)
    # waits for the ACK a keep-alive client delays ~40 ms.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


async def start_http_server(
    address: str, app: Any, *, grace_seconds: float, tls: TlsConfig | None = None
) -> RunningHttpServer:
    """Serves `app` on `address` (host:port) until RunningHttpServer.stop.

    Args:
        tls: the certificate files to serve HTTPS with (plaintext when None or not enabled).

    Raises:
        ConfigError: the address cannot be listened on, or the TLS files are unusable.
    """
    following = FollowingTlsContext(tls) if tls is not None and tls.enabled else None
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
        ssl_context_factory=None if following is None else lambda _config, _default: following.context,
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
    security = "plaintext" if following is None else "TLS"
    if tls is not None and tls.client_ca_file:
        security += " with client certificates"
    log.info("HTTP API (Connect, gRPC-Web) listening on %s (port %d, %s)", address, port, security)
    return RunningHttpServer(server, task, port)
