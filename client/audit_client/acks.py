"""JetStream publishes whose acknowledgements arrive on one shared inbox.

nats-py's `publish_async` does the same, but a send that fails after it has taken a slot (connection lost,
outbound buffer full during a reconnect) never gives the slot back, so a long outage wedges the producer.
Here every publish removes its own entry whatever happens: ack, error, timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import itertools
import json

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

_NO_RESPONDERS = "503"


class JetStreamAcks:
    """Publishes to JetStream and waits for each acknowledgement, many at once."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._subscribing = asyncio.Lock()
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}

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
        future = self._waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return  # too late: its publish already timed out or was cancelled
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
        else:
            future.set_result(PubAck.from_response(response))

    async def publish(self, subject: str, payload: bytes, *, headers: dict[str, str], ack_wait: float) -> PubAck:
        """Publishes and waits up to `ack_wait` seconds for JetStream to store the message.

        Raises:
            nats.errors.Error / nats.js.errors.Error: not sent, or refused by JetStream.
            TimeoutError: no acknowledgement in time.
        """
        prefix = await self._reply_prefix()
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._nc.publish(subject, payload, reply=f"{prefix}.{token}", headers=headers)
            return await asyncio.wait_for(future, ack_wait)
        finally:
            self._waiting.pop(token, None)
