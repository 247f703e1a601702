"""A lean, prefetching reader of a JetStream pull consumer.

nats-py's `PullSubscription.fetch` waits for each message with its own timer, which costs more than
the rest of ingesting an event. This reader keeps one pull request outstanding
(`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`), collects deliveries in a callback, and hands out
whatever has arrived, so the next batch is already on its way while the current one is being committed.
A new request goes out only when less than a batch is buffered, so with the worker's pipeline at most
five batches are in hand (one being acked, one being appended, two decoded and waiting, one buffered), which
bounds memory; while a batch is in hand the worker reports its messages in progress every third of ack_wait, so
a slow append does not get the batches behind it redelivered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

_STATUS = "Status"
_REQUEST_ENDED = frozenset({"404", "408", "409", "503"})  # no messages, expired, refused, no such consumer


class PullReader:
    """Reads batches from a durable pull consumer; one instance per worker."""

    def __init__(self, nc: NatsClient, stream: str, consumer: str, *, batch_size: int, expires: float) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch_size = batch_size
        self._expires_ns = int(expires * 1_000_000_000)
        self._buffer: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._outstanding = 0
        """Messages the pending pull request may still deliver (0: no request pending)."""
        self._requested_at = 0.0
        self._paused_until = 0.0
        self._closing = False
        self.refused = False
        """Set when the server refused a request (consumer gone, limits): the owner should re-provision."""

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        # Deliveries always carry a $JS.ACK reply subject; server status messages never do (a producer's own
        # "Status" header must not make its event look like one).
        status = msg.headers.get(_STATUS) if msg.headers and not msg.data and not msg.reply else None
        if status is None:
            self._buffer.append(msg)
            self._outstanding -= 1
        elif status in _REQUEST_ENDED:
            if status in ("409", "503"):
                log.warning("pull request refused: %s", msg.headers.get("Description", ""))
                self.refused = True
                self._paused_until = asyncio.get_running_loop().time() + 1.0  # no tight loop of refusals
            self._outstanding = 0
        else:
            return  # heartbeats and other control messages
        if self._outstanding <= 0:
            self._outstanding = 0
            await self._request_more()
        self._arrived.set()

    async def _request_more(self) -> None:
        """Asks for the next batch when no request is pending and less than a batch is buffered."""
        if self._closing or self._outstanding or len(self._buffer) >= self._batch_size:
            return
        if asyncio.get_running_loop().time() < self._paused_until:
            return
        self._outstanding = self._batch_size
        self._requested_at = asyncio.get_running_loop().time()
        request = {"batch": self._batch_size, "expires": self._expires_ns}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def next_batch(self, wait: float) -> list[Msg]:
        """Up to batch_size messages: whatever has arrived, or the first to arrive within `wait` seconds."""
        if self._outstanding and asyncio.get_running_loop().time() - self._requested_at > self._expires_ns / 1e9 + 2:
            # The request outlived its expiry without an answer: lost in a reconnect. Ask again.
            log.warning("pull request unanswered past its expiry; requesting again")
            self._outstanding = 0
        await self._request_more()
        if not self._buffer:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return []
        count = min(len(self._buffer), self._batch_size)
        batch = [self._buffer.popleft() for _ in range(count)]
        await self._request_more()
        return batch

    @property
    def buffered(self) -> list[Msg]:
        """The messages that arrived and were not handed out yet."""
        return list(self._buffer)

    @property
    def draining(self) -> bool:
        """True while a closed reader still has messages in hand or on their way."""
        return bool(self._buffer) or self._outstanding > 0

    def close(self) -> None:
        """Stops asking for messages; what was already requested keeps arriving and must be processed."""
        self._closing = True

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
