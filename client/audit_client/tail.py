"""Live tail of the audit log that survives disconnects: it resumes from its last checkpoint, so a consumer
sees every matching event once, in position order, across server restarts.

Example:
    async with grpc.aio.insecure_channel("localhost:50051") as channel:
        tail = tail_events(channel, EventFilter(tenant="acme"), after_position=saved_checkpoint)
        async for event in tail:
            handle(event)
            saved_checkpoint = event.position   # or tail.checkpoint once a batch is handled
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc as pb_grpc
from audit.v1 import event_pb2

log = logging.getLogger(__name__)

_CLOCK_MARGIN = dt.timedelta(seconds=5)
"""How much earlier than this machine's "now" a retried first call starts, for clock skew with the database."""

Metadata = Sequence[tuple[str, str]]

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
"""Statuses after which the tail reconnects; any other (a bad filter, a refused token) ends it."""


class EventTail:
    """An endless, reconnecting TailEvents stream. Iterate it for events, or `batches()` for whole responses.

    Args:
        channel: a channel to the API.
        request_filter: which events (the fields and access rules of ListEvents).
        after_position: start after this position (a saved checkpoint; 0 for the whole log).
        from_time: start with the first event committed at or after this time. Neither: start now.
        metadata: call metadata such as ("authorization", "Bearer ..."), or a function returning it for each
            (re)connect, so that a refreshed token is used.
        initial_backoff, max_backoff: seconds between reconnect attempts (doubling, with full jitter).
        idle_timeout: reconnect when nothing, not even a heartbeat, arrives for this long.

    Attributes:
        checkpoint: every matching event up to this position has been yielded and the consumer has come back
            for more (None before that): persist it to resume later with `after_position=checkpoint`. To
            resume after a single event instead, persist that event's `position`.
        caught_up: whether the stream has read history up to the live head (since the last (re)connect).
        reconnects: how many times the stream was re-established.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        request_filter: pb.EventFilter | None = None,
        *,
        after_position: int | None = None,
        from_time: dt.datetime | None = None,
        metadata: Metadata | Callable[[], Metadata] = (),
        initial_backoff: float = 0.1,
        max_backoff: float = 10.0,
        idle_timeout: float = 30.0,
    ) -> None:
        if after_position is not None and from_time is not None:
            raise ValueError("give after_position or from_time, not both")
        self._stub = pb_grpc.AuditServiceStub(channel)
        self._filter = request_filter or pb.EventFilter()
        self._from_time = from_time
        self._metadata = metadata
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._idle_timeout = idle_timeout
        self.checkpoint: int | None = after_position
        self._resume_after = after_position
        """Where a reconnect resumes: the checkpoint of the last response received."""
        self.caught_up = False
        self.reconnects = 0

    def _request(self) -> pb.TailEventsRequest:
        request = pb.TailEventsRequest(filter=self._filter)
        if self._resume_after is not None:
            request.after_position = self._resume_after
        elif self._from_time is not None:
            request.from_time.FromDatetime(self._from_time)
        else:
            # Starting "now": should this first call fail before its first message, the next one starts from
            # this moment rather than from a later "now", so nothing committed in between is skipped.
            self._from_time = dt.datetime.now(dt.UTC) - _CLOCK_MARGIN
        return request

    async def batches(self) -> AsyncIterator[pb.TailEventsResponse]:
        """Every response but heartbeats, without events already yielded; `checkpoint` moves past a response
        when the consumer comes back for the next one."""
        backoff = self._initial_backoff
        while True:
            metadata = self._metadata() if callable(self._metadata) else self._metadata
            call = self._stub.TailEvents(self._request(), metadata=tuple(metadata))
            try:
                while True:
                    async with asyncio.timeout(self._idle_timeout):
                        response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    backoff = self._initial_backoff
                    if response.heartbeat:
                        continue
                    self.caught_up = self.caught_up or response.caught_up
                    after = self._resume_after
                    if after is not None and any(event.position <= after for event in response.events):
                        kept = [event for event in response.events if event.position > after]
                        del response.events[:]
                        response.events.extend(kept)
                    self._resume_after = max(after or 0, response.checkpoint_position)
                    yield response
                    self.checkpoint = self._resume_after  # the consumer is back: it has handled the batch
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE_CODES:
                    raise
                code, after = error.code().name, self._resume_after
                log.info("tail interrupted (%s: %s); resuming after %s", code, error.details(), after)
            except TimeoutError:
                log.info("tail silent for %.0f s; reconnecting after %s", self._idle_timeout, self._resume_after)
            finally:
                call.cancel()
            self.caught_up = False
            self.reconnects += 1
            await asyncio.sleep(random.uniform(0, backoff))  # full jitter: replicas are not stampeded at once
            backoff = min(backoff * 2, self._max_backoff)

    async def __aiter__(self) -> AsyncIterator[event_pb2.AuditEvent]:
        async for response in self.batches():
            for event in response.events:
                yield event


def tail_events(channel: grpc.aio.Channel, request_filter: pb.EventFilter | None = None, **options: Any) -> EventTail:
    """Tails the audit log through `channel`, reconnecting with backoff from the last checkpoint.

    Args:
        request_filter: which events (the fields and access rules of ListEvents).
        **options: keyword options of EventTail (after_position, from_time, metadata, backoff, idle_timeout).

    Raises (while iterating):
        grpc.aio.AioRpcError: a status that retrying cannot fix (INVALID_ARGUMENT, PERMISSION_DENIED...).
    """
    return EventTail(channel, request_filter, **options)
