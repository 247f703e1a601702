"""One WatchAlerts stream: the tenant's alerts in storage order (alerts.seq) from a start, then as they are stored.

No live feed is needed: alerts are few, and the stream polls the alerts table once caught up. seq order is commit
order (store/reactor.py inserts alerts one transaction at a time), so reading `seq > cursor` never skips an alert
committed later. A page is read only once the previous one has been handed to gRPC, whose flow control holds the
generator while a reader does not read: a stalled reader costs at most one page, never a growing buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
from audit.v1 import alert_rules_pb2 as pb

from ..config import TailConfig
from ..core.page_token import PageToken, encode_page_token
from ..core.records import datetime_to_micros
from ..core.stored_alert import row_to_alert
from ..errors import ShuttingDownError
from ..store.reactor import alerts_page

PAGE_ALERTS = 100
"""Alerts per read, at most."""
PAGE_BYTES = 1024 * 1024
"""About the most bytes of alerts per read (one alert always fits)."""


class AlertWatch:
    """Produces the responses of one stream; iterate `responses()`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        tenant: str,
        digest: str,
        after_seq: int,
        closing: asyncio.Event,
        config: TailConfig,
        *,
        stored_from: int | None = None,
    ) -> None:
        """
        Args:
            digest: what the cursors are bound to (the tenant and the caller).
            after_seq: the stream sends the alerts stored after this one.
            closing: set when the server shuts down: the stream ends with UNAVAILABLE.
            config: the poll, heartbeat intervals of live streams (those of TailEvents).
            stored_from: in µs, alerts stored before it are not sent (it matters when from_time is in the future).
        """
        self._pool = pool
        self._tenant = tenant
        self._digest = digest
        self._seq = after_seq
        self._closing = closing
        self._config = config
        self._stored_from = stored_from
        self._last_sent = time.monotonic()

    @property
    def cursor(self) -> str:
        """Resumes after the last alert examined."""
        return encode_page_token(PageToken(self._seq, self._digest))

    def _response(self, alert: pb.Alert | None = None, **flags: bool) -> pb.WatchAlertsResponse:
        self._last_sent = time.monotonic()
        return pb.WatchAlertsResponse(alert=alert, cursor=self.cursor, **flags)

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise ShuttingDownError(
                f"the server is shutting down; resume with after_cursor={self.cursor} on another replica or later"
            )

    async def responses(self) -> AsyncIterator[pb.WatchAlertsResponse]:
        caught_up = False
        while True:
            self._check_open()
            rows, more = await alerts_page(self._pool, self._tenant, self._seq, PAGE_ALERTS, PAGE_BYTES)
            for row in rows:
                self._check_open()
                self._seq = row["seq"]
                if self._stored_from is not None and datetime_to_micros(row["created_at"]) < self._stored_from:
                    continue
                yield self._response(row_to_alert(row))
            if more:
                continue
            if not caught_up:
                caught_up = True
                yield self._response(caught_up=True)
            elif time.monotonic() - self._last_sent >= self._config.heartbeat_seconds:
                yield self._response(heartbeat=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.poll_seconds):
                    await self._closing.wait()
