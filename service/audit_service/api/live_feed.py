"""The live feed of one API replica: commit announcements from NATS, put in order, holes filled from the log,
fanned out to the TailEvents subscribers of this process, each through its own bounded buffer.

Correctness never depends on NATS: a missed or reordered announcement is a hole that is read from PostgreSQL,
and the log's head is polled, so even the last announcement before a quiet period cannot be lost. Nothing is
shared between replicas, nor between a replica and the ingest workers, beyond NATS and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter

import asyncpg
import nats.errors
from audit.v1 import committed_pb2, event_pb2
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..config import ApiConfig, TailConfig
from ..core.matching import event_columns
from ..core.records import chain_hash
from ..core.sequencer import Append, HoleTimer, Sequencer
from ..core.stored_event import event_from_canonical, row_to_event
from ..errors import ShuttingDownError
from ..store import queries
from .read_budget import ReadBudget

log = logging.getLogger(__name__)

HOLE_GRACE_SECONDS = 0.25
"""How long a hole may stay open before it is read from the log: two workers' announcements of consecutive
appends can arrive out of order, a few milliseconds apart."""
FILL_CHUNK = 1000
"""Events read from the log at a time when filling a hole, at most."""
FILL_CHUNK_BYTES = 4 * 1024 * 1024
"""Bytes of events read at a time when filling a hole, at most (plus one event)."""
MAX_PENDING_BYTES = 64 * 1024 * 1024
"""Bytes of announcements held while their appends wait to be whole or handed out (e.g. while the database is
away); beyond it they are dropped, and their positions read from the log."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A committed event, with the columns live filters look at (computed once for every subscriber)."""

    event: event_pb2.AuditEvent
    columns: dict[str, object]
    size: int
    """Serialized bytes, counted against a subscriber's buffer."""

    @property
    def position(self) -> int:
        return self.event.position


@dataclass(eq=False, slots=True)
class LiveSubscription:
    """One subscriber's view of the feed: the appends committed since it (re)joined, minus what it has taken."""

    tenant: str | None
    """Only this tenant's events are buffered; None: every tenant's."""
    max_buffered: int
    max_buffered_bytes: int
    examined: int
    """The feed's head when the last append was handed over (everything up to it was offered)."""
    pending: deque[tuple[int, Sequence[LiveEvent]]] = field(default_factory=deque)
    buffered: int = 0
    buffered_bytes: int = 0
    overflowed: bool = False
    """It fell more than max_buffered events behind: the buffer was dropped; read from the log, then resync."""
    closed: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, last_position: int, events: Sequence[LiveEvent]) -> None:
        if self.overflowed:
            return
        if events:
            size = sum(item.size for item in events)
            if self.buffered + len(events) > self.max_buffered or self.buffered_bytes + size > self.max_buffered_bytes:
                self._empty()
                self.overflowed = True
                self.wakeup.set()
                return
            self.pending.append((last_position, events))
            self.buffered += len(events)
            self.buffered_bytes += size
            self.wakeup.set()
        self.examined = last_position

    def take(self) -> tuple[list[tuple[int, Sequence[LiveEvent]]], int]:
        """Everything buffered, and the position examined up to (one consistent snapshot)."""
        taken = list(self.pending)
        self._empty()
        self.wakeup.clear()
        return taken, self.examined

    def restart(self, examined: int) -> None:
        """Empty again and no longer overflowed, offered what follows `examined` (after a fallback to the log)."""
        self._empty()
        self.overflowed = False
        self.examined = examined

    def _empty(self) -> None:
        self.pending.clear()
        self.buffered = self.buffered_bytes = 0


class LiveFeed:
    """Committed appends in position order, for the tails of this process.

    Args:
        nc: a NATS connection (the feed subscribes to <committed_subject_prefix>.>).
        pool: connections to the log, for holes and the head poll.
    """

    def __init__(
        self,
        nc: NatsClient,
        pool: asyncpg.Pool,
        config: TailConfig,
        committed_subject_prefix: str,
        *,
        read_budget: ReadBudget | None = None,
    ) -> None:
        self._nc = nc
        self._pool = pool
        self._read_budget = read_budget or ReadBudget(ApiConfig().read_buffer_bytes)
        self._config = config
        self._subject = f"{committed_subject_prefix}.>"
        self._subscriptions: set[LiveSubscription] = set()
        self._sequencer: Sequencer[committed_pb2.CommittedEvent] | None = None
        self._nats_subscription: Subscription | None = None
        self._announced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._delivered: int | None = None
        self.holes_filled = 0
        """Appends, or parts of them, read from the log rather than taken from an announcement."""

    @property
    def head(self) -> int:
        """The last position handed out: a subscription joining now is offered everything after it."""
        if self._delivered is None:
            raise RuntimeError("the live feed is not started")
        return self._delivered

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    async def start(self) -> None:
        """Listens for announcements, then reads the log's head: nothing committed after that is missed."""
        self._nats_subscription = await self._nc.subscribe(self._subject, cb=self._on_announcement)
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._nc.flush(timeout=5)
        self._delivered = await queries.log_head(self._pool)
        self._sequencer = Sequencer(self._delivered, max_pending_bytes=MAX_PENDING_BYTES)
        self._task = asyncio.create_task(self._run(), name="live-feed")
        log.info("live feed listening on %s from position %d", self._subject, self._sequencer.head)

    async def close(self) -> None:
        """Ends every subscription (their streams end with UNAVAILABLE) and stops listening."""
        self._closing = True
        for subscription in self._subscriptions:
            subscription.closed = True
            subscription.wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nats_subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._nats_subscription.unsubscribe()

    def subscribe(self, tenant: str | None) -> LiveSubscription:
        """Joins the feed: every append after `head` (now) will be offered to the subscription."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down; retry on another replica or later")
        subscription = LiveSubscription(
            tenant=tenant,
            max_buffered=self._config.buffer_events,
            max_buffered_bytes=self._config.buffer_bytes,
            examined=self.head,
        )
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: LiveSubscription) -> None:
        self._subscriptions.discard(subscription)

    def resync(self, subscription: LiveSubscription) -> int:
        """Rejoins a subscription that overflowed: empty again, offered what follows `head`; returns `head`."""
        subscription.restart(self.head)
        return self.head

    async def _on_announcement(self, msg: Msg) -> None:
        if self._sequencer is None:
            return
        try:
            part = committed_pb2.CommittedBatch.FromString(msg.data)
        except DecodeError as error:
            log.warning("ignoring a malformed announcement on %s: %s", msg.subject, error)
            return
        self._sequencer.add(
            part.prev_position, part.last_position, part.events, part.omitted_events, size=len(msg.data)
        )
        self._announced.set()

    async def _run(self) -> None:
        assert self._sequencer is not None
        sequencer = self._sequencer
        next_poll = 0.0
        holes = HoleTimer(HOLE_GRACE_SECONDS)
        while True:
            try:
                self._announced.clear()  # before reading the sequencer: a part arriving later wakes the next pass
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self._config.poll_seconds
                    sequencer.observe_head(await queries.log_head(self._pool))
                ready = sequencer.ready()
                if ready and await self._deliver_ready(ready) < ready[-1].last_position:
                    sequencer.reset(self.head)  # the rest of this release waits for the log
                up_to = sequencer.hole()
                if holes.due(sequencer.head, up_to, now):  # a new hole is given time for its announcement
                    log.info(
                        "positions %d..%d were not announced here; reading them from the log", sequencer.head + 1, up_to
                    )
                    holes.restart()
                    sequencer.reset(await self._fill(sequencer.head, up_to))
                    continue
                timeout = min(next_poll - time.monotonic(), HOLE_GRACE_SECONDS if up_to is not None else 3600)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(timeout, 0.001)):
                        await self._announced.wait()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is away: the feed waits; tails keep their cursors
                log.warning("live feed paused (%s: %s); retrying", type(error).__name__, error)
                # Whatever was released but not handed out is a hole again, read from the log once it is back.
                sequencer.reset(self.head)
                await asyncio.sleep(0.5)

    async def _fill(self, after_position: int, up_to_position: int) -> int:
        """Reads (after_position, up_to_position] from the log and hands it out in chunks; returns the position
        reached. Never past the log's own head, and only over gapless positions: announcements claiming more
        (a foreign publisher, a database that went back) cannot move the feed ahead of the log."""
        assert self._sequencer is not None
        self.holes_filled += 1
        log_head = await queries.log_head(self._pool)
        if log_head < up_to_position:  # announced only after COMMIT, so never beyond the head read after it
            log.warning("announced positions up to %d are beyond the log's head %d: ignored", up_to_position, log_head)
            self._sequencer.forget_beyond(log_head)
            up_to_position = log_head
        cursor = after_position
        while cursor < up_to_position:
            if not self._subscriptions:  # nobody to hand it to: skip the reads
                cursor = up_to_position
                self._delivered = cursor
                break
            async with self._read_budget.reserve(FILL_CHUNK_BYTES) as reservation:
                chunk = await queries.read_range(self._pool, cursor, up_to_position, FILL_CHUNK, FILL_CHUNK_BYTES)
                reservation.keep(chunk.size)
                positions = [row["position"] for row in chunk.rows]
                full = chunk.cut or len(chunk.rows) == FILL_CHUNK
                if positions != list(range(cursor + 1, cursor + 1 + len(positions))) or (
                    not full and cursor + len(positions) != up_to_position
                ):
                    raise RuntimeError(f"positions {cursor + 1}..{up_to_position} are not all in the log yet")
                events = [row_to_event(row) for row in chunk.rows]
            cursor = positions[-1]
            self._deliver(cursor, events)
        return max(cursor, after_position)

    async def _deliver_ready(self, appends: Sequence[Append[committed_pb2.CommittedEvent]]) -> int:
        """Hands out consecutive appends the sequencer released; returns the position reached.

        Announcements are hints, never the record: anyone allowed to publish on the subject could send one. An
        announced append is handed out only if every event it carries is the one the log holds at its position
        (its hash covers its canonical bytes, which hold its position, and equals the hash stored there), which
        also proves those positions are committed. Anything else is read from the log instead, never past the
        log's head: a forged announcement is never delivered and cannot hide the real event at its position.
        """
        if not self._subscriptions:  # nothing to hand out: only move the head, as far as the log has it
            return await self._fill(appends[0].prev_position, appends[-1].last_position)
        stored: dict[int, bytes] = {}
        if any(append.events is not None for append in appends):
            stored = await queries.stored_hashes(self._pool, appends[0].prev_position, appends[-1].last_position)
        for append in appends:
            events = self._verified(append, stored)
            if events is not None:
                self._deliver(append.last_position, events)
                continue
            reached = await self._fill(append.prev_position, append.last_position)
            if reached < append.last_position:
                return reached
        return self.head

    @staticmethod
    def _verified(
        append: Append[committed_pb2.CommittedEvent], stored: dict[int, bytes]
    ) -> list[event_pb2.AuditEvent] | None:
        """The announced append's events, in position order, if they are exactly the log's events at its
        positions; None when it must be read from the log (events omitted, a part repeated or forged)."""
        if append.events is None:
            return None
        if len(append.events) != append.last_position - append.prev_position:
            return None
        for announced in append.events:
            if chain_hash(announced.prev_hash, announced.canonical) != announced.hash:
                return None
        try:
            events = sorted(
                (event_from_canonical(event.canonical, event.prev_hash, event.hash) for event in append.events),
                key=attrgetter("position"),
            )
        except Exception:  # bytes from the network that are no canonical encoding: not the log's events
            return None
        positions = range(append.prev_position + 1, append.last_position + 1)
        if [event.position for event in events] != list(positions):
            return None
        if any(stored.get(event.position, b"").hex() != event.hash for event in events):
            return None
        return events

    def _deliver(self, last_position: int, events: Sequence[event_pb2.AuditEvent]) -> None:
        self._delivered = last_position
        if not self._subscriptions:
            return
        tenants = {subscription.tenant for subscription in self._subscriptions}
        # Filter columns and sizes only for events someone may take: not for tenants nobody here tails.
        live = [
            LiveEvent(event, event_columns(event), event.ByteSize())
            for event in events
            if None in tenants or event.tenant in tenants
        ]
        by_tenant: dict[str, list[LiveEvent]] = {}
        for item in live:
            by_tenant.setdefault(item.event.tenant, []).append(item)
        for subscription in self._subscriptions:
            chosen = live if subscription.tenant is None else by_tenant.get(subscription.tenant, ())
            subscription.offer(last_position, chosen)
