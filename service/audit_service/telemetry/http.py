"""The HTTP port of a process (AUDIT_METRICS_ADDRESS): /metrics (Prometheus text), /livez and /readyz.

It runs on a thread of its own, so a scrape or a probe never waits behind the event loop and never delays it.
- /livez answers 200 while the event loop turns: a task of the loop beats every second, and a loop that has
  not beaten for LIVENESS_STALL_SECONDS is stuck (a restart is the cure). A dependency being down is not a
  liveness failure.
- /readyz answers 200 when every check of `Readiness` passes (connected to NATS and PostgreSQL, consumer bound
  or server started), else 503 naming what is wrong, one check a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg

from ..config import parse_grpc_address
from ..store.pool import DATABASE_FAILURES

log = logging.getLogger(__name__)

LIVENESS_STALL_SECONDS = 10.0
"""A loop that has not turned for this long fails /livez."""
BEAT_SECONDS = 1.0
DATABASE_CHECK_SECONDS = 2.0
"""How often the readiness check of PostgreSQL runs `SELECT 1`."""
DATABASE_CHECK_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
"""Longest a client may take to send its request (or to read the response) before its connection is closed: a
client that connects and sends nothing (slow loris) would otherwise hold a thread of the server for ever."""


class Readiness:
    """What /readyz reports: named checks, each fine (None) or failing with a reason.

    Parts of the process either report their state (`set`: the ingest worker says whether its consumer is
    bound) or register a check that is evaluated at each probe (`watch`: is the NATS connection up). Checks
    start failing ("starting") until first reported. Safe to call from the loop while the HTTP thread reads.
    """

    def __init__(self) -> None:
        self._states: dict[str, str | None] = {}
        self._watches: dict[str, Callable[[], str | None]] = {}
        self._last_beat = time.monotonic()

    def expect(self, *names: str) -> None:
        """Declares checks that fail until they are first `set`."""
        for name in names:
            self._states.setdefault(name, "starting")

    def set(self, name: str, problem: str | None) -> None:
        """Reports check `name` fine (problem None) or failing for `problem`."""
        self._states[name] = problem

    def watch(self, name: str, check: Callable[[], str | None]) -> None:
        """Registers a check evaluated at each probe: it returns None when fine, else the problem."""
        self._watches[name] = check

    def forget(self, *names: str) -> None:
        """Removes checks of a part that stopped."""
        for name in names:
            self._states.pop(name, None)
            self._watches.pop(name, None)

    def problems(self) -> dict[str, str | None]:
        """Every check, by name: None when fine, else its problem."""
        results = dict(self._states)
        for name, check in list(self._watches.items()):
            try:
                results[name] = check()
            except Exception as error:
                results[name] = f"check failed: {type(error).__name__}: {error}"
        return results

    @property
    def ready(self) -> bool:
        return not any(self.problems().values())

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def stalled_seconds(self) -> float:
        """Seconds since the event loop last beat."""
        return time.monotonic() - self._last_beat


async def _beat(readiness: Readiness) -> None:
    while True:
        readiness.beat()
        await asyncio.sleep(BEAT_SECONDS)


async def watch_database(url: str, readiness: Readiness, name: str) -> None:
    """Keeps check `name` up to date with whether PostgreSQL answers `SELECT 1` on a connection of its own (so
    that a busy pool does not read as a database that is down)."""
    conn: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(url, timeout=DATABASE_CHECK_TIMEOUT_SECONDS)
                await conn.fetchval("SELECT 1", timeout=DATABASE_CHECK_TIMEOUT_SECONDS)
                readiness.set(name, None)
            except DATABASE_FAILURES as error:
                readiness.set(name, f"PostgreSQL unreachable: {type(error).__name__}: {error}".strip())
                if conn is not None:
                    conn.terminate()
                    conn = None
            await asyncio.sleep(DATABASE_CHECK_SECONDS)
    finally:
        if conn is not None:
            conn.terminate()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog (5 by default): a burst of probes and scrapes is not refused

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away or timed out mid-response: not a traceback on stderr (socketserver's default).
        log.debug("metrics port: the request of %s failed", client_address, exc_info=True)


def _handler(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "audit-service"
        timeout = REQUEST_TIMEOUT_SECONDS  # socket timeout of each connection

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                stalled = readiness.stalled_seconds()
                if stalled < LIVENESS_STALL_SECONDS:
                    self._send(200, "ok\n")
                else:
                    self._send(503, f"event loop stalled for {stalled:.0f} s\n")
            elif path == "/readyz":
                problems = readiness.problems()
                body = "".join(f"{name}: {problem or 'ok'}\n" for name, problem in sorted(problems.items()))
                self._send(503 if any(problems.values()) else 200, body or "ok\n")
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            else:
                self._send(404, "not found: /metrics, /livez and /readyz are served here\n")

        def _send(self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a line
            pass

    return Handler


@contextlib.asynccontextmanager
async def serving_http(address: str, readiness: Readiness) -> AsyncIterator[int]:
    """Serves /metrics (prometheus_client's default registry, which setup_telemetry's PrometheusMetricReader
    feeds), /livez and /readyz on `address` (host:port) for the block; yields the bound port.

    Raises:
        ConfigError: the address cannot be listened on.
    """
    from ..errors import ConfigError

    host, port = parse_grpc_address(address, "AUDIT_METRICS_ADDRESS")
    host = host.strip("[]")
    try:
        server = _Server((host, port), _handler(readiness))
    except OSError as error:
        raise ConfigError("AUDIT_METRICS_ADDRESS", f"cannot listen on {address}: {error}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    beating = asyncio.create_task(_beat(readiness), name="liveness-beat")
    bound = server.server_address[1]
    log.info("metrics and probes on http://%s:%d (/metrics, /livez, /readyz)", host, bound)
    try:
        yield bound
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await asyncio.to_thread(server.shutdown)
        server.server_close()
