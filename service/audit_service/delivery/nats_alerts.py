"""Alert delivery on NATS JetStream: every alert the reactor stores is published to <prefix>.alerts.<tenant>
(stream <prefix>_ALERTS), its id as Nats-Msg-Id and its protobuf JSON as payload.

A durable subscription on the alerts table: it reads the alerts after its checkpoint (reactor_checkpoints
'alerts-nats', an alerts.seq) in storage order, a page at a time, publishes each and waits for JetStream's
acknowledgement, then advances the checkpoint past the page. A crash between publishing and checkpointing
publishes the page again with the same Nats-Msg-Id, which JetStream drops within its duplicate window: at least
once, and once in the stream unless the restart took longer than the window. While NATS is unreachable (or refuses
the reactor's user) nothing is lost: alerts wait in PostgreSQL and delivery retries with backoff. It runs beside
rule evaluation as a task of its own, sharing nothing with it but the database, so evaluation never waits for NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ..config import NatsConfig
from ..core.stored_alert import alert_json, row_to_alert
from ..ingest.streams import alerts_stream_config, ensure_stream
from ..store.pool import DATABASE_FAILURES
from ..store.reactor import alerts_after, checkpoint, store_step
from ..waiting import pause

log = logging.getLogger(__name__)

SUBSCRIPTION = "alerts-nats"
PAGE_ALERTS = 100
"""Alerts per page: at most this many are published again after a crash."""
ACK_TIMEOUT_SECONDS = 5.0
MIN_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MSG_ID = "Nats-Msg-Id"

ErrorCallback = Callable[[Exception], Awaitable[None]]
Connect = Callable[[ErrorCallback], Awaitable[NatsClient]]
"""Connects to NATS (reconnecting by itself once connected), reporting each failed attempt to the callback."""

_RETRIED = (*DATABASE_FAILURES, nats.errors.Error)


def alert_subject(config: NatsConfig, tenant: str) -> str:
    return f"{config.alerts_subject_prefix}.{tenant}"


class NatsAlertDelivery:
    """Publishes the stored alerts on NATS until `stop` is set (see the module's docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: NatsConfig,
        connect: Connect,
        *,
        page_alerts: int = PAGE_ALERTS,
        poll_seconds: float = 0.2,
        subscription: str = SUBSCRIPTION,
    ) -> None:
        self._pool = pool
        self._config = config
        self._connect = connect
        self._page_alerts = page_alerts
        self._poll_seconds = poll_seconds
        self._subscription = subscription
        self._backoff = MIN_BACKOFF_SECONDS
        self._unreachable = False
        """True from a failure until the next success: only the first failure of an outage is a warning."""

    async def run(self, stop: asyncio.Event) -> None:
        nc: NatsClient | None = None
        stream_ready = False
        position: int | None = None  # the checkpoint, once read; None after an error: read it again
        try:
            while not stop.is_set():
                try:
                    if nc is None or nc.is_closed:
                        nc, stream_ready = await self._connected(stop), False
                        if nc is None:
                            return
                    js = nc.jetstream()
                    if not stream_ready:
                        await ensure_stream(js, alerts_stream_config(self._config))
                        stream_ready = True
                        self._succeeded()
                    if position is None:
                        async with self._pool.acquire() as conn:
                            position = await checkpoint(conn, self._subscription)
                    delivered = await self._deliver_page(js, position)
                    if delivered is None:  # nothing asked of NATS: says nothing of whether it is back
                        await pause(until=stop, seconds=self._poll_seconds)
                    else:
                        self._succeeded()
                        position = delivered
                except _RETRIED as error:
                    self._failed(f"paused, alerts wait in PostgreSQL ({type(error).__name__}: {error or '-'})")
                    position = None
                    await pause(until=stop, seconds=self._next_backoff())
        finally:
            if nc is not None and not nc.is_closed:
                await nc.close()

    async def _deliver_page(self, js: JetStreamContext, after: int) -> int | None:
        """Publishes the alerts stored after `after` (one page) and advances the checkpoint past them; returns the
        new checkpoint, or None when there was nothing to publish."""
        async with self._pool.acquire() as conn:
            rows = await alerts_after(conn, after, self._page_alerts)
        if not rows:
            return None
        await self.publish(js, rows)
        last = rows[-1]["seq"]
        async with self._pool.acquire() as conn:
            await store_step(conn, [], last, self._subscription)
        log.debug("published %d alerts on NATS, up to seq %d", len(rows), last)
        return last

    async def publish(self, js: JetStreamContext, rows: Sequence[asyncpg.Record]) -> None:
        """Publishes the alerts one after the other (so the stream keeps their storage order), each acknowledged."""
        for row in rows:
            await js.publish(
                alert_subject(self._config, row["tenant"]),
                alert_json(row_to_alert(row)),
                timeout=ACK_TIMEOUT_SECONDS,
                stream=self._config.alerts_stream,
                headers={MSG_ID: row["id"]},
            )

    async def _connected(self, stop: asyncio.Event) -> NatsClient | None:
        """A NATS connection, however long NATS takes to answer; None once `stop` is set."""
        while not stop.is_set():
            connecting = asyncio.ensure_future(self._connect(self._on_nats_error))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_RETRIED):
                    await connecting
                return None
            try:
                nc = connecting.result()
            except _RETRIED as error:  # the credentials refused (connect_nats fails at once then), or no server
                self._failed(f"cannot connect, alerts wait in PostgreSQL: {type(error).__name__}: {error}")
                await pause(until=stop, seconds=self._next_backoff())
                continue
            log.info("alert delivery: connected to NATS, publishing on %s.<tenant>", self._config.alerts_subject_prefix)
            return nc
        return None

    async def _on_nats_error(self, error: Exception) -> None:
        self._failed(f"NATS: {type(error).__name__}: {error or 'no detail'}; alerts wait in PostgreSQL")

    def _failed(self, message: str) -> None:
        level = logging.DEBUG if self._unreachable else logging.WARNING
        self._unreachable = True
        log.log(level, "alert delivery: %s; retrying", message)

    def _succeeded(self) -> None:
        if self._unreachable:
            log.info("alert delivery: publishing again")
        self._unreachable = False
        self._backoff = MIN_BACKOFF_SECONDS

    def _next_backoff(self) -> float:
        seconds = self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        return seconds
