"""JetStream publishes whose acknowledgements arrive on one shared inbox.

nats-py's `publish_async` does the same, but a send that fails after it has taken a slot (connection lost,
outbound buffer full during a reconnect) never gives the slot back, so a long outage wedges the producer.
Here every publish removes its own entry whatever happens: ack, error, timeout or cancellation.

Timeouts are enforced by one sweep over the oldest pending publishes rather than a timer per publish
(`asyncio.wait_for` costs more than the rest of a publish). Publishes are registered in send order and all
share the same `ack_wait`, so the oldest ones are always the first to expire; a publish therefore fails with
TimeoutError between `ack_wait` and `ack_wait * (1 + 1/_SWEEPS_PER_ACK_WAIT)` seconds after it was sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

_NO_RESPONDERS = "503"
_SWEEPS_PER_ACK_WAIT = 4


class _Pending:
    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[PubAck], deadline: float) -> None:
        self.future = future
        self.deadline = deadline


class JetStreamAcks:
    """Publishes to JetStream and waits for each acknowledgement, many at once."""

    def __init__(self, nc: NatsClient, *, ack_wait: float) -> None:
        self._nc = nc
        self._ack_wait = ack_wait
        self._prefix: str | None = None
        self._subscribing = asyncio.Lock()
        self._tokens = itertools.count()
        self._waiting: dict[str, _Pending] = {}
        """In registration order (dicts keep it): the first entries are the first to expire."""
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Publishes still waiting for their acknowledgement."""
        return len(self._waiting)

    async def _reply_prefix(self) -> str:
        if self._prefix is None:
            async with self._subscribing:
                if self._prefix is None:
                    prefix = self._nc.new_inbox()
                    await self._nc.subscribe(f"{prefix}.*", cb=self._on_reply)
                    self._prefix = prefix
        return self._prefix

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if pending is None or pending.future.done():
            return  # too late: its publish already timed out or was cancelled
        future = pending.future
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
        except ValueError as error:
            future.set_exception(error)
            return
        if "error" in response:
            future.set_exception(APIError.from_error(response["error"]))
            return
        if "stream" not in response or "seq" not in response:
            future.set_exception(ValueError(f"malformed JetStream acknowledgement: {msg.data[:200]!r}"))
            return
        # The fields a publisher needs; PubAck.from_response walks the dataclass fields on every call.
        future.set_result(PubAck(stream=response["stream"], seq=response["seq"], duplicate=response.get("duplicate")))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            await asyncio.sleep(self._ack_wait / _SWEEPS_PER_ACK_WAIT)
            now = loop.time()
            for token, pending in list(self._waiting.items()):
                if pending.deadline > now:
                    break
                del self._waiting[token]
                if not pending.future.done():
                    pending.future.set_exception(TimeoutError("no JetStream acknowledgement in time"))
        self._sweeper = None

    def close(self) -> None:
        """Fails the publishes still waiting (the connection is closed) and stops the timeout sweep."""
        waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            if not pending.future.done():
                pending.future.set_exception(ConnectionClosedError())
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def send(
        self, subject: str, payload: bytes, *, headers: dict[str, str]
    ) -> tuple[str, asyncio.Future[PubAck]]:
        """Publishes without waiting for the acknowledgement: returns a token and the future of the acknowledgement,
        which fails with TimeoutError about `ack_wait` seconds after the send. Pass the token to `discard()` when
        giving up on the future.

        Raises:
            nats.errors.Error: not sent (nothing is left waiting).
        """
        prefix = await self._reply_prefix()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = _Pending(future, loop.time() + self._ack_wait)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await self._nc.publish(subject, payload, reply=f"{prefix}.{token}", headers=headers)
        except BaseException:
            self.discard(token)
            raise
        return token, future

    def discard(self, token: str) -> None:
        """Stops waiting for the acknowledgement of a `send()` (a late one is ignored)."""
        pending = self._waiting.pop(token, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()

    async def publish(self, subject: str, payload: bytes, *, headers: dict[str, str]) -> PubAck:
        """Publishes and waits up to about `ack_wait` seconds for JetStream to store the message.

        Raises:
            nats.errors.Error / nats.js.errors.Error: not sent, or refused by JetStream.
            TimeoutError: no acknowledgement in time.
        """
        token, future = await self.send(subject, payload, headers=headers)
        try:
            return await future
        finally:
            self.discard(token)
