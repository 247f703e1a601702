"""The ingest consumer's backlog, for the lag gauges: how many messages wait, and how old the oldest one is.

A worker refreshes the pending count from the consumer's info every few seconds (and, for free, from the
metadata of every batch it fetches), and notes the JetStream timestamp of each batch it holds until the batch is
acknowledged. The gauges only read these values: a metrics collection never waits on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from ..telemetry import metrics

log = logging.getLogger(__name__)


class ConsumerLag:
    """The backlog of one durable consumer as one worker sees it.

    Args:
        js: the worker's JetStream context (its user may read its own consumer's info).
        stream: the events stream.
        durable: the ingest consumer.
        attributes: the attributes of the gauges (messaging.* of the stream and consumer).
        refresh_seconds: how often the pending count is read from the consumer's info.
        clock: seconds since the epoch (JetStream timestamps are wall-clock times).
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        attributes: metrics.Attributes,
        *,
        refresh_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._attributes = attributes
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._held: dict[int, float] = {}
        """Batches in hand (fetched, not yet acknowledged): their first message's JetStream timestamp."""
        self._last_oldest: float | None = None
        self._refresh_failed = False
        self.pending: int | None = None
        """Messages not yet delivered to the consumer (None: not known yet)."""

    def hold(self, key: int, msgs: Sequence[Msg]) -> None:
        """A batch was fetched: the oldest message is at most as old as its first one (stream order)."""
        metadata = msgs[0].metadata
        self._held[key] = self._last_oldest = metadata.timestamp.timestamp()
        self.pending = msgs[-1].metadata.num_pending

    def release(self, key: int) -> None:
        """The batch is stored and acknowledged (or handed back)."""
        self._held.pop(key, None)

    def oldest_age(self) -> float | None:
        """Seconds since the oldest message not yet stored was stored in JetStream; 0 when none waits."""
        if self._held:
            return max(self._clock() - min(tuple(self._held.values())), 0.0)  # a copy: collected from another thread
        if self.pending == 0:
            return 0.0
        if self._last_oldest is None:
            return None
        return max(self._clock() - self._last_oldest, 0.0)  # waiting, not fetched: at least as old as the last seen

    async def refresh(self) -> None:
        """Reads the pending count from the consumer's info (one request to the server)."""
        info = await self._js.consumer_info(self._stream, self._durable, timeout=5)
        if info.num_pending is not None:
            self.pending = info.num_pending

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ConsumerLag]:
        """Reports the gauges and refreshes the pending count for the block."""
        removers = [
            metrics.INGEST_PENDING.add(self._attributes, lambda: self.pending),
            metrics.INGEST_OLDEST_AGE.add(self._attributes, self.oldest_age),
        ]
        stopping = asyncio.Event()
        task = asyncio.create_task(self._refresh_periodically(stopping), name="audit-ingest-lag")
        try:
            yield self
        finally:
            # The event too: Python 3.11's wait_for (under nats-py's request) can lose a cancellation that arrives
            # as the reply does, and the loop would then sleep a whole period before the worker could stop.
            stopping.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for remove in removers:
                remove()

    async def _refresh_periodically(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.refresh()
                self._refresh_failed = False
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as error:
                # Metrics only: ingest goes on. Logged once per outage, not every few seconds.
                if not self._refresh_failed:
                    log.warning(
                        "cannot read the consumer %s's pending count (%s: %s); the lag gauges use the last batch's",
                        self._durable,
                        type(error).__name__,
                        error,
                    )
                self._refresh_failed = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._refresh_seconds)
