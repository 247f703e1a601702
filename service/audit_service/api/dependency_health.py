"""grpc.health.v1 follows the dependencies: NOT_SERVING while PostgreSQL or NATS is unreachable, SERVING after.

The check runs in a task of its own, on a PostgreSQL connection of its own (never one of the RPCs' pool, which
may be busy for good reasons), and every step has a timeout: a hung dependency makes the API report
NOT_SERVING, it cannot make the check or any RPC wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import asyncpg
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from nats.aio.client import Client as NatsClient

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DependencyHealth:
    """Sets the health of `services` from a periodic `SELECT 1` and the NATS connection's state.

    Args:
        health: the server's health servicer (after `enter_graceful_shutdown` it ignores updates, so a shutting
            down server stays NOT_SERVING).
        services: the service names to report for ("" is the server as a whole).
        database_url: where the check connects (the service role's URL, TLS settings included).
        nc: the API's NATS connection (the live feed's).
        interval: seconds between checks.
        timeout: longest one PostgreSQL check (connecting included) may take.
        on_database_checked: told each check's PostgreSQL result (True: reachable), e.g. for /readyz, so that the
            process checks its database once, not once per probe.
    """

    def __init__(
        self,
        health: health_aio.HealthServicer,
        services: Iterable[str],
        database_url: str,
        nc: NatsClient | None,
        *,
        interval: float,
        timeout: float,
        on_database_checked: Callable[[bool], None] | None = None,
    ) -> None:
        self._health = health
        self._services = tuple(services)
        self._database_url = database_url
        self._nc = nc
        self._interval = interval
        self._timeout = timeout
        self._on_database_checked = on_database_checked
        self._conn: asyncpg.Connection | None = None
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool | None:
        """The last reported state (None before the first check)."""
        return self._serving

    async def _database_reachable(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self._database_url,
                    timeout=self._timeout,
                    server_settings={"application_name": "audit-service-health"},
                )
            return await self._conn.fetchval("SELECT 1", timeout=self._timeout) == 1
        except Exception as error:  # whatever the failure (refused, timeout, TLS, terminated), it is unreachable
            log.debug("health: PostgreSQL check failed: %s: %s", type(error).__name__, error)
            self._drop_connection()
            return False

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.terminate()  # no goodbye to a server that may not answer
            self._conn = None

    def _nats_reachable(self) -> bool:
        return self._nc is None or self._nc.is_connected

    async def check(self) -> bool:
        """Checks both dependencies once and reports the result; returns it."""
        database = await self._database_reachable()
        if self._on_database_checked is not None:
            self._on_database_checked(database)
        nats = self._nats_reachable()
        serving = database and nats
        if serving != self._serving:
            if serving:
                log.info("health: PostgreSQL and NATS reachable: SERVING")
            else:
                down = [name for name, up in (("PostgreSQL", database), ("NATS", nats)) if not up]
                log.warning("health: %s unreachable: NOT_SERVING", " and ".join(down))
            for service in self._services:
                await self._health.set(service, SERVING if serving else NOT_SERVING)
            self._serving = serving
        return serving

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the monitor must outlive any surprise; the next round tries again
                log.exception("health: check failed")
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        """Checks every `interval` seconds in a background task, until `close()`."""
        self._task = asyncio.create_task(self._run(), name="dependency-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_connection()
