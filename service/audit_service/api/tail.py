"""One TailEvents stream: a catch-up subscription (history from PostgreSQL, then live from the feed).

    join the live feed  ->  read history (cursor, target]  ->  caught_up  ->  live, skipping <= cursor
                                ^                                                  |
                                +---- fell behind its buffer: resync, new target --+

Joining the feed first fixes `target`: every append after it is offered live, everything up to it is in the
log, so the switch can neither skip nor repeat an event. Checkpoints carry the last position examined.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import event_pb2
from opentelemetry import trace

from ..config import TailConfig
from ..core.filters import Expr
from ..core.matching import Matcher, compile_matcher
from ..core.records import timestamp_micros
from ..core.stored_event import row_to_event
from ..errors import InvalidArgumentError, ShuttingDownError
from ..store import queries
from ..telemetry import metrics
from .live_feed import LiveEvent, LiveFeed, LiveSubscription
from .read_budget import ReadBudget

tracer = trace.get_tracer("audit_service.api.tail")

HISTORY_PAGE = 1000
"""Events per history read, at most."""
HISTORY_PAGE_BYTES = 1024 * 1024
"""Bytes of events per history read, at most (plus one event): what a tail holds while its reader is slow is
about two of these (the page being sent and the next one) and the response in flight."""
HISTORY_WINDOW = 50_000
"""Positions one history read looks at, at most: a selective filter still checkpoints as it goes."""
_EVENT_FRAMING_BYTES = 6
_RESPONSE_RESERVE_BYTES = 64


@dataclass(frozen=True, slots=True)
class TailPlan:
    """What a validated TailEvents request asks for, within the caller's scope."""

    where: Expr
    tenant: str | None
    """The one tenant the stream can see (for the feed to hand it only those events), or None."""
    after_position: int | None
    """Start after this position; None: at the live head (now)."""
    recorded_from: int | None = None
    """from_time in µs: events recorded before it are not sent (it matters when from_time is in the future)."""


class TailStream:
    """Produces the responses of one stream. Create it, iterate `responses()`, which cleans up after itself."""

    def __init__(
        self,
        plan: TailPlan,
        feed: LiveFeed,
        pool: asyncpg.Pool,
        config: TailConfig,
        max_response_bytes: int,
        *,
        read_budget: ReadBudget,
    ) -> None:
        self._plan = plan
        self._read_budget = read_budget
        self._feed = feed
        self._pool = pool
        self._config = config
        self._max_response_bytes = max_response_bytes
        self._matcher: Matcher = compile_matcher(plan.where)
        self._cursor = 0
        self._last_sent = time.monotonic()
        self._sent_cursor = -1
        self._subscription: LiveSubscription | None = None

    def leave(self) -> None:
        """Stops taking live events (the call is over); idempotent."""
        if self._subscription is not None:
            self._feed.unsubscribe(self._subscription)

    async def responses(self) -> AsyncIterator[pb.TailEventsResponse]:
        subscription = self._subscription = self._feed.subscribe(self._plan.tenant)
        try:
            target = await self._target(subscription.examined)
            after_position = self._plan.after_position
            if after_position is not None and after_position > target:
                beyond = f"{after_position} is beyond the log's last position {target}"
                raise InvalidArgumentError("after_position", beyond)
            self._cursor = target if after_position is None else after_position
            while True:
                # aclosing: a stream cancelled mid-read stops its prefetch now, not when collected.
                async with contextlib.aclosing(self._history(subscription, target)) as history:
                    async for response in history:
                        yield response
                yield self._response(caught_up=True)
                async with contextlib.aclosing(self._live(subscription)) as live:
                    async for response in live:
                        yield response
                # It fell behind: back to the log, then live again.
                metrics.TAIL_RESYNCS.add(1)
                target = await self._target(self._feed.resync(subscription))
        finally:
            self._feed.unsubscribe(subscription)

    async def _target(self, joined_at: int) -> int:
        """Where history ends: the log's head, read after joining the feed at `joined_at`. The feed may lag the
        log (an announcement not yet heard); what it offers up to the target is skipped as already read."""
        return max(joined_at, await queries.log_head(self._pool))

    def _response(self, events: Sequence[event_pb2.AuditEvent] = (), **flags: bool) -> pb.TailEventsResponse:
        self._last_sent = time.monotonic()
        self._sent_cursor = self._cursor
        return pb.TailEventsResponse(events=events, checkpoint_position=self._cursor, **flags)

    def _idle_response(self) -> pb.TailEventsResponse | None:
        """A checkpoint when filtered-out positions went by, a heartbeat when nothing did; None if not due."""
        idle = time.monotonic() - self._last_sent
        if self._cursor != self._sent_cursor and idle >= self._config.checkpoint_seconds:
            return self._response()
        if idle >= self._config.heartbeat_seconds:
            return self._response(heartbeat=True)
        return None

    def _sized(self, events: list[event_pb2.AuditEvent], examined: int) -> list[pb.TailEventsResponse]:
        """Responses carrying `events` within the response size limit; the last one checkpoints `examined`."""
        responses = []
        room = self._max_response_bytes - _RESPONSE_RESERVE_BYTES
        chunk: list[event_pb2.AuditEvent] = []
        for event in events:
            size = event.ByteSize() + _EVENT_FRAMING_BYTES
            if chunk and size > room:
                self._cursor = chunk[-1].position
                responses.append(self._response(chunk))
                chunk, room = [], self._max_response_bytes - _RESPONSE_RESERVE_BYTES
            chunk.append(event)
            room -= size
        self._cursor = examined
        if chunk:
            responses.append(self._response(chunk))
        return responses

    def _recorded_in_time(self, event: event_pb2.AuditEvent) -> bool:
        recorded_from, recorded_at = self._plan.recorded_from, event.recorded_at
        return recorded_from is None or timestamp_micros(recorded_at.seconds, recorded_at.nanos) >= recorded_from

    def _check_open(self, subscription: LiveSubscription) -> None:
        if subscription.closed:
            raise ShuttingDownError(
                f"the server is shutting down; resume with after_position={self._cursor} on another replica or later"
            )

    async def _history(self, subscription: LiveSubscription, target: int) -> AsyncIterator[pb.TailEventsResponse]:
        """Reads (cursor, target] from the log, the next page while the current one is being sent."""
        where = self._plan.where

        async def read(after: int) -> tuple[list[event_pb2.AuditEvent], int]:
            """The events of the next page and the position examined up to; the process's read budget is held
            only while the rows are fetched and turned into events, never while a response waits for the reader."""
            up_to = min(target, after + HISTORY_WINDOW)
            query = queries.PageQuery(
                where=where,
                newest_first=False,
                after_position=after,
                limit=HISTORY_PAGE,
                max_bytes=HISTORY_PAGE_BYTES,
                up_to_position=up_to,
            )
            with tracer.start_as_current_span(
                "audit.tail history page", attributes={"audit.after_position": after, "audit.up_to_position": up_to}
            ) as span:
                async with self._read_budget.reserve(HISTORY_PAGE_BYTES) as reservation:
                    page = await queries.list_events(self._pool, query)
                    reservation.keep(page.size)
                    events = [event for event in map(row_to_event, page.rows) if self._recorded_in_time(event)]
                span.set_attribute("audit.events", len(events))
            full = page.cut or len(page.rows) == HISTORY_PAGE
            return events, page.rows[-1]["position"] if full else up_to

        if self._cursor >= target:
            return
        reading = asyncio.ensure_future(read(self._cursor))
        try:
            while True:
                events, examined = await reading
                if examined < target:
                    reading = asyncio.ensure_future(read(examined))
                self._check_open(subscription)
                if events:
                    for response in self._sized(events, examined):
                        yield response
                else:
                    self._cursor = examined
                    if (idle := self._idle_response()) is not None:
                        yield idle
                if examined >= target:
                    return
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading

    async def _live(self, subscription: LiveSubscription) -> AsyncIterator[pb.TailEventsResponse]:
        """Streams what the feed offers until the subscription falls behind (then returns) or closes."""
        while True:
            self._check_open(subscription)
            if subscription.overflowed:
                return
            taken, examined = subscription.take()
            if taken:
                events = await self._matching(taken)
                if events:
                    for response in self._sized(events, max(self._cursor, examined)):
                        # As it is handed to gRPC; its first event is the oldest it carries.
                        recorded_at = response.events[0].recorded_at
                        lag = time.time() - recorded_at.seconds - recorded_at.nanos / 1e9
                        metrics.TAIL_DELIVERY_LAG.record(max(lag, 0.0))
                        yield response
                    continue
            self._cursor = max(self._cursor, examined)
            if (idle := self._idle_response()) is not None:
                yield idle
            wait = min(self._config.checkpoint_seconds, self._config.heartbeat_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await subscription.wakeup.wait()

    async def _matching(self, taken: list[tuple[int, Sequence[LiveEvent]]]) -> list[event_pb2.AuditEvent]:
        """The offered events after the cursor that match the filter, in position order."""
        cursor, matcher = self._cursor, self._matcher
        chosen: list[LiveEvent] = []
        undecided: list[int] = []
        for _, events in taken:
            for item in events:
                if item.position <= cursor:
                    continue
                if not self._recorded_in_time(item.event):
                    continue
                verdict = matcher(item.columns)
                if verdict is None:
                    undecided.append(item.position)
                    chosen.append(item)
                elif verdict:
                    chosen.append(item)
        if undecided:  # only the database folds case exactly as search does: ask it about these few
            confirmed = await queries.matching_positions(self._pool, undecided, self._plan.where)
            rejected = set(undecided) - confirmed
            chosen = [item for item in chosen if item.position not in rejected]
        return [item.event for item in chosen]
