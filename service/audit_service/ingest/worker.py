"""The ingest worker: fetch a batch, dead-letter what is invalid, append the rest in one transaction,
acknowledge only after COMMIT. Several workers can share the durable consumer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import nats.errors
import nats.js.errors
from audit_client.errors import InvalidEventError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

from ..config import Config
from ..core.decode import DecodedEvent, decode_event
from ..core.records import Presealed, preseal
from ..core.tracecontext import parse_traceparent
from ..errors import UnavailableError
from ..store import queries
from ..store.append import AppendResult, LogAppender
from ..store.pool import CONNECTION_FAILURES, DATABASE_FAILURES, acquire
from ..store.search_index import SearchIndexMerger
from ..telemetry import metrics
from .announce import Announcer
from .dead_letter import dead_letter_message
from .lag import ConsumerLag
from .pull import PullReader
from .storage_errors import caused_by_the_events, storage_refusal_detail, timed_out
from .streams import provision

if TYPE_CHECKING:
    from ..telemetry.http import Readiness

log = logging.getLogger(__name__)
tracer = trace.get_tracer("audit_service.ingest")

_MAX_SPAN_LINKS = 128
_GC_THRESHOLD = 50_000
"""Allocations not yet freed between two passes of the youngest generation (Python's default: 700)."""
_BATCHES_AHEAD = 2
"""Batches decoded and waiting for their append (besides the one being appended): the event loop has decoding to
do whenever it would otherwise wait for PostgreSQL."""
_DECODE_SLICE = 8
"""Events decoded between two turns of the event loop (~0.5 ms of CPU): an answer from PostgreSQL waits no longer."""
_ACK_SLICE = 64
"""Acks sent between two turns of the event loop (~0.5 ms of CPU), for the same reason."""
_RETRY_BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class IngestStats:
    appended: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class _Refusal:
    msg: Msg
    reason: str
    field: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Accepted:
    msg: Msg
    decoded: DecodedEvent
    presealed: Presealed
    """Prepared while the previous batch is being stored, so that the append's serialized section only splices
    positions and hashes in."""


@dataclass(frozen=True, slots=True)
class _Committed:
    """Events of a batch that one append transaction took (the whole batch, or a part when it was split)."""

    accepted: Sequence[_Accepted]
    result: AppendResult
    committed_at: float


@dataclass(slots=True)
class _Batch:
    msgs: Sequence[Msg]
    accepted: list[_Accepted] = field(default_factory=list)
    refused: list[_Refusal] = field(default_factory=list)
    committed: list[_Committed] = field(default_factory=list)
    appended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the batch needs the database no more: the next batch's append begins while this one's acks and
    commit announcement go out."""
    announced: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the batch's commit announcements are out (or it has none): the next batch announces after it, so
    one worker's announcements go out in commit order even when a small batch commits while a large one is
    still being acked."""


class BatchAbandoned(Exception):
    """The worker is stopping while the database is unavailable: the batch is handed back to JetStream."""


class BatchTooSlow(Exception):
    """A statement of the append ran past its time limit: the batch is halved, since the same batch would time
    out again (a slow or busy database and large events); a single event is retried as it is."""


class EventsRejected(Exception):
    """The database refused the events for what they hold (storage_errors.caused_by_the_events): retrying
    them cannot help. The batch is halved until the culprits are found and dead-lettered."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class IngestWorker:
    """Moves events from the AUDIT_EVENTS stream into the log."""

    def __init__(
        self, config: Config, nc: NatsClient, pool: asyncpg.Pool, *, readiness: Readiness | None = None
    ) -> None:
        """
        Args:
            readiness: told whether the consumer is bound (check ingest.consumer), for /readyz.
        """
        self._config = config
        self._readiness = readiness
        self._nc = nc
        self._js = nc.jetstream()
        self._pool = pool
        self._appender = LogAppender(config.ingest.mask)
        self._announcer = Announcer(nc, config.nats.committed_subject_prefix)
        self._search_merger = SearchIndexMerger(pool)
        self._stop: asyncio.Event | None = None
        self.stats = IngestStats()
        self._attributes: dict[str, str] = {
            "messaging.system": "nats",
            "messaging.destination.name": config.nats.events_stream,
            "messaging.consumer.group.name": config.ingest.durable,
        }
        self._reason_attributes: dict[str, dict[str, str]] = {}
        self._lag = ConsumerLag(
            self._js,
            config.nats.events_stream,
            config.ingest.durable,
            self._attributes,
            refresh_seconds=config.ingest.lag_refresh_seconds,
        )
        self.head: int | None = None
        """The log's last position as of this worker's start or its last append (None: not known yet)."""
        self._in_hand: dict[int, Sequence[Msg]] = {}
        """The messages of each batch decoded and not yet stored and acked, by id(batch)."""

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Ingests until `stop` is set; the batches in hand when it is set are finished, committed and acked."""
        nats_config, ingest = self._config.nats, self._config.ingest
        self._stop = stop
        await provision(self._js, nats_config, ingest)
        reader = PullReader(
            self._nc,
            nats_config.events_stream,
            ingest.durable,
            batch_size=ingest.batch_size,
            expires=ingest.fetch_timeout_seconds,
        )
        await reader.start()
        try:
            self.head = await queries.log_head(self._pool)  # the gauge has a value before the first append
        except DATABASE_FAILURES as error:
            name = type(error).__name__
            log.warning("cannot read the log's head (%s: %s); its gauge waits for an append", name, error)
        remove_head = metrics.LOG_HEAD.add({}, lambda: self.head)
        try:
            async with self._lag.running():
                keeping = asyncio.create_task(self._keep_in_progress(reader))
                try:
                    with _collector_for_batches():
                        await self._consume(reader, stop, ready)
                finally:
                    keeping.cancel()
        finally:
            remove_head()
            await self._search_merger.close()
        await reader.stop()
        self._report_consumer("stopped")
        log.info(
            "ingest worker stopped: %d appended, %d duplicates, %d dead-lettered",
            self.stats.appended,
            self.stats.duplicates,
            self.stats.dead_lettered,
        )

    async def _consume(self, reader: PullReader, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        nats_config, ingest = self._config.nats, self._config.ingest
        log.info(
            "ingest worker consuming %s.> as %s (batch %d)",
            nats_config.events_subject_prefix,
            ingest.durable,
            ingest.batch_size,
        )
        self._report_consumer(None)
        if ready is not None:
            ready.set()
        # A pipeline: the next batches are fetched and decoded (CPU) while one is being appended (mostly waiting
        # for PostgreSQL), up to _BATCHES_AHEAD of them; each batch's append waits for the previous one's, so
        # batches are appended one after the other, in order, and acked while the next one is appended. The
        # decoding yields to the event loop every few events (_decode), or the append's statements would wait
        # for it: each answer from PostgreSQL is handled, and the next statement sent, by this same loop.
        in_flight: collections.deque[_Batch] = collections.deque()  # decoded, not appended yet, in order
        tasks: list[asyncio.Task[None]] = []
        backlog = False  # the last batch was full: more are likely waiting
        pull_failing = False
        while True:
            if stop.is_set():
                reader.close()  # what was requested still arrives, and is committed and acked below
                if not reader.draining:
                    break
            if reader.refused and not stop.is_set():
                reader.refused = False
                self._report_consumer("JetStream refused pull requests (consumer deleted?); re-provisioning")
                if await self._reprovision():
                    self._report_consumer(None)
            while in_flight and (in_flight[0].appended.is_set() or not backlog):
                # The last batch was not full (no backlog): let the next one grow while the appends in hand finish,
                # as it would with nothing in hand, rather than appending a few events at a time behind them (each
                # append costs the same round trips whatever its size). Decoding ahead is for a backlog.
                await in_flight.popleft().appended.wait()
            try:
                msgs = await reader.next_batch(ingest.fetch_timeout_seconds)
            except (nats.errors.Error, OSError) as error:
                log.warning("pull request failed (%s: %s); retrying", type(error).__name__, error)
                self._report_consumer(f"pull requests failing: {type(error).__name__}: {error}")
                pull_failing = True
                await asyncio.sleep(0.5)
                continue
            if pull_failing:
                pull_failing = False
                self._report_consumer(None)
            if not msgs:
                tasks = await self._finish_done(tasks)
                continue
            backlog = len(msgs) >= ingest.batch_size
            metrics.INGEST_BATCH_SIZE.record(len(msgs), self._attributes)
            batch = await self._decode(msgs)
            self._lag.hold(id(batch), msgs)
            self._in_hand[id(batch)] = msgs
            tasks.append(asyncio.create_task(self._store(batch, after=in_flight[-1] if in_flight else None)))
            in_flight.append(batch)
            while in_flight and (in_flight[0].appended.is_set() or len(in_flight) > 1 + _BATCHES_AHEAD):
                await in_flight.popleft().appended.wait()
            tasks = await self._finish_done(tasks)
        for task in tasks:
            await self._finish(task)

    def _report_consumer(self, problem: str | None) -> None:
        if self._readiness is not None:
            self._readiness.set("ingest.consumer", problem)

    async def _reprovision(self) -> bool:
        """Brings back the streams and the consumer (deleted, or the server lost its state); False if it failed."""
        try:
            await provision(self._js, self._config.nats, self._config.ingest)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
            log.warning("re-provisioning failed (%s: %s); will retry", type(error).__name__, error)
            return False
        return True

    async def _finish_done(self, tasks: list[asyncio.Task[None]]) -> list[asyncio.Task[None]]:
        """Finishes the stores that are done; returns those still running."""
        for task in tasks:
            if task.done():
                await self._finish(task)
        return [task for task in tasks if not task.done()]

    async def _finish(self, storing: asyncio.Task[None]) -> None:
        """Waits for a batch being stored. Shielded: a cancellation must not abandon a batch between COMMIT
        and the acks."""
        try:
            await asyncio.shield(storing)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as error:
            # Unacknowledged messages come back after ack_wait; appending them again is harmless.
            log.warning("batch not finished (%s: %s); it will be redelivered", type(error).__name__, error)
            await asyncio.sleep(0.5)

    async def _decode(self, msgs: Sequence[Msg]) -> _Batch:
        """Decodes and validates a fetched batch: what can be appended, and what must be dead-lettered."""
        now = time.time()
        limits = self._config.ingest.limits
        mask = self._config.ingest.mask
        subject_prefix_length = len(self._config.nats.events_subject_prefix) + 1
        batch = _Batch(msgs)
        for index, msg in enumerate(msgs):
            if index % _DECODE_SLICE == _DECODE_SLICE - 1:
                await asyncio.sleep(0)  # lets the batch being stored send its next statement
            try:
                decoded = decode_event(
                    msg.data,
                    msg.headers,
                    now_seconds=now,
                    limits=limits,
                    mask=mask,
                    subject_tenant=msg.subject[subject_prefix_length:],
                )
                presealed = preseal(decoded.content)
            except InvalidEventError as error:
                batch.refused.append(_Refusal(msg, error.reason, error.field, error.detail))
            except Exception as error:  # a decoder bug must not wedge the stream: keep the message aside
                log.exception("unexpected error decoding stream sequence %s", msg.metadata.sequence.stream)
                batch.refused.append(_Refusal(msg, "undecodable", "", f"{type(error).__name__}: {error}"))
            else:
                batch.accepted.append(_Accepted(msg, decoded, presealed))
        return batch

    async def _store(self, batch: _Batch, *, after: _Batch | None) -> None:
        """Appends the accepted events in one transaction once the batch `after` is appended, dead-letters the
        rest, acks all after COMMIT."""
        try:
            if after is not None:
                await after.appended.wait()
            await self._store_batch(batch, after)
        finally:
            batch.appended.set()
            batch.announced.set()
            self._lag.release(id(batch))
            del self._in_hand[id(batch)]

    async def _keep_in_progress(self, reader: PullReader) -> None:
        """Every third of ack_wait, tells JetStream that the messages in hand (buffered by the reader, decoded and
        waiting, being appended or acked) are still being worked on: an append slowed by the database (a lock held
        by retention, a long COPY) must not get the batches behind it redelivered and appended again as
        duplicates."""
        while True:
            await asyncio.sleep(self._config.ingest.ack_wait_seconds / 3)
            in_hand = [*reader.buffered, *(msg for msgs in self._in_hand.values() for msg in msgs)]
            for index, msg in enumerate(in_hand):
                if index % _ACK_SLICE == _ACK_SLICE - 1:
                    await asyncio.sleep(0)  # thousands in hand: the appends' statements go on meanwhile
                if msg.is_acked:
                    continue
                with contextlib.suppress(nats.errors.Error):  # a buffered write each, as acks are; no task each
                    await msg.in_progress()

    async def _store_batch(self, batch: _Batch, after: _Batch | None) -> None:
        refused = batch.refused
        nats_config = self._config.nats
        before = (self.stats.appended, self.stats.duplicates, self.stats.dead_lettered)
        with tracer.start_as_current_span(
            "audit.ingest batch",
            kind=SpanKind.CONSUMER,
            links=_producer_links(batch.msgs),
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "ingest",
                "messaging.destination.name": f"{nats_config.events_subject_prefix}.>",
                "messaging.consumer.group.name": self._config.ingest.durable,
                "messaging.batch.message_count": len(batch.msgs),
                "audit.ingest.invalid": len(batch.refused),
            },
        ) as span:
            if batch.accepted:
                try:
                    refused.extend(await self._append_isolating_rejects(batch.accepted, batch.committed))
                except BatchAbandoned:
                    log.warning("stopping with the database unavailable: %d events handed back", len(batch.accepted))
                    span.set_attribute("audit.ingest.handed_back", len(batch.accepted))
            batch.appended.set()
            # The next batch's append takes the head's lock first; this batch's acks go out while it runs.
            await asyncio.sleep(0)
            for committed in batch.committed:
                refused.extend(await self._acknowledge(committed, after))
            if refused:
                await self._dead_letter(refused)
            if span.is_recording():
                span.set_attributes(
                    {
                        "audit.ingest.appended": self.stats.appended - before[0],
                        "audit.ingest.duplicates": self.stats.duplicates - before[1],
                        "audit.ingest.dead_lettered": self.stats.dead_lettered - before[2],
                    }
                )

    async def _append_isolating_rejects(self, accepted: list[_Accepted], committed: list[_Committed]) -> list[_Refusal]:
        """Appends (each commit added to `committed`, to be acknowledged); when the database rejects the batch,
        halves it to find and refuse the culprits."""
        try:
            result = await self._append_with_retry(accepted)
        except BatchTooSlow:
            log.warning("appending %d events timed out; appending them in two halves", len(accepted))
            middle = len(accepted) // 2
            return [
                *await self._append_isolating_rejects(accepted[:middle], committed),
                *await self._append_isolating_rejects(accepted[middle:], committed),
            ]
        except EventsRejected as rejected:
            if len(accepted) == 1:
                detail = storage_refusal_detail(rejected.cause)
                log.warning("database refused event %s: %s", accepted[0].decoded.event.event_id, detail)
                return [_Refusal(accepted[0].msg, "rejected_by_storage", "", detail)]
            middle = len(accepted) // 2
            return [
                *await self._append_isolating_rejects(accepted[:middle], committed),
                *await self._append_isolating_rejects(accepted[middle:], committed),
            ]
        committed.append(_Committed(accepted, result, time.time()))
        self._search_merger.appended(result.appended)  # a merge runs while the next batch is stored
        return []

    async def _acknowledge(self, committed: _Committed, after: _Batch | None) -> list[_Refusal]:
        """Acks what one append stored, announces it once the batch `after` is announced; returns the conflicting
        duplicates, to be dead-lettered."""
        accepted, result = committed.accepted, committed.result
        conflicting = {conflict.index: conflict for conflict in result.conflicts}
        for index, event in enumerate(accepted):
            if index % _ACK_SLICE == _ACK_SLICE - 1:
                await asyncio.sleep(0)  # lets the next append send its next statement
            if index not in conflicting:
                await event.msg.ack()  # a buffered write each; no task per message
        if after is not None:
            await after.announced.wait()
        await self._announcer.announce(result.prev_position, result.last_position, result.sealed)
        self.stats.appended += result.appended
        self.stats.duplicates += result.duplicates
        self.head = result.last_position if self.head is None else max(self.head, result.last_position)
        metrics.INGEST_APPENDED.add(result.appended, self._attributes)
        metrics.INGEST_DUPLICATES.add(result.duplicates, self._attributes)
        published_at = accepted[0].msg.metadata.timestamp.timestamp()
        metrics.INGEST_PUBLISH_TO_COMMIT.record(max(committed.committed_at - published_at, 0.0), self._attributes)
        return [
            _Refusal(
                accepted[conflict.index].msg,
                "conflicting_duplicate",
                "event_id",
                f"event {conflict.event_id} is stored at position {conflict.stored_position} with other content "
                f"(differs in {', '.join(conflict.fields)}); this event was not stored",
            )
            for conflict in result.conflicts
        ]

    async def _append_with_retry(self, accepted: Sequence[_Accepted]) -> AppendResult:
        msgs = [event.msg for event in accepted]
        contents = [event.decoded.content for event in accepted]
        presealed = [event.presealed for event in accepted]
        attempt = 0
        while True:
            try:
                started = time.perf_counter()
                with tracer.start_as_current_span(
                    "audit.append",
                    attributes={"db.system.name": "postgresql", "audit.append.events": len(contents)},
                ) as span:
                    async with acquire(self._pool) as conn:
                        result = await self._appender.append(conn, contents, presealed=presealed)
                    if span.is_recording():
                        span.set_attributes(
                            {
                                "audit.append.appended": result.appended,
                                "audit.append.duplicates": result.duplicates,
                                "audit.append.first_position": result.prev_position + 1,
                                "audit.append.last_position": result.last_position,
                            }
                        )
                metrics.INGEST_APPEND_DURATION.record(time.perf_counter() - started, self._attributes)
                return result
            except Exception as error:
                if caused_by_the_events(error):
                    raise EventsRejected(error) from error
                if timed_out(error) and len(contents) > 1:
                    raise BatchTooSlow from error
                if self._stop is not None and self._stop.is_set():
                    # Redelivered at once to another worker rather than holding up the shutdown.
                    await asyncio.gather(*(msg.nak() for msg in msgs), return_exceptions=True)
                    raise BatchAbandoned from error
                delay = _RETRY_BACKOFF_SECONDS[min(attempt, len(_RETRY_BACKOFF_SECONDS) - 1)]
                attempt += 1
                log.log(
                    logging.WARNING if isinstance(error, (UnavailableError, *CONNECTION_FAILURES)) else logging.ERROR,
                    "append of %d events failed (%s: %s); retrying in %.1f s",
                    len(contents),
                    type(error).__name__,
                    error,
                    delay,
                )
                # Keep the messages ours while the database is away, instead of having them redelivered.
                await asyncio.gather(*(msg.in_progress() for msg in msgs), return_exceptions=True)
                await asyncio.sleep(delay)

    async def _dead_letter(self, refused: Sequence[_Refusal]) -> None:
        js = self._js
        prefix = self._config.nats.dead_subject_prefix
        for refusal in refused:
            body, headers = dead_letter_message(
                refusal.msg,
                reason=refusal.reason,
                field=refusal.field,
                detail=refusal.detail,
                max_payload=self._nc.max_payload,
            )
            subject = f"{prefix}.{refusal.reason}"
            try:
                await js.publish(subject, body, headers=headers)
            except nats.js.errors.NoStreamResponseError:
                # AUDIT_DEAD is gone (deleted, or a server that lost its state): bring it back and publish again,
                # or every refused message would come back for ever without being dead-lettered.
                log.warning("no stream takes %s; re-provisioning the streams", subject)
                await self._reprovision()
                await js.publish(subject, body, headers=headers)
            await refusal.msg.ack()
            self.stats.dead_lettered += 1
            metrics.INGEST_DEAD_LETTERED.add(1, self._reason_attributes_of(refusal.reason))
            log.warning(
                "dead-lettered stream sequence %d to %s.%s: %s%s",
                refusal.msg.metadata.sequence.stream,
                prefix,
                refusal.reason,
                f"{refusal.field}: " if refusal.field else "",
                refusal.detail,
            )

    def _reason_attributes_of(self, reason: str) -> dict[str, str]:
        attributes = self._reason_attributes.get(reason)
        if attributes is None:  # reasons are a short fixed list (audit_client.errors), so is this cache
            attributes = self._reason_attributes[reason] = {**self._attributes, "reason": reason}
        return attributes


@contextlib.contextmanager
def _collector_for_batches() -> Iterator[None]:
    """Python's cyclic garbage collector, tuned for a process that allocates and frees ~100 objects per event.

    With the default threshold (a pass every 700 allocations not yet freed) a draining worker spent ~9% of its time
    in collector passes, up to 67 ms each (full passes over every batch in hand), each a stall of the whole pipeline.
    Nearly everything an event allocates is freed by reference counting as soon as its batch is acked; what start-up
    allocated lives as long as the process and is frozen out of the passes.
    """
    global _collector_users, _process_threshold
    _collector_users += 1
    if _collector_users == 1:  # the process's first running worker (workers start and stop in any order)
        _process_threshold = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(_GC_THRESHOLD, *_process_threshold[1:])
    try:
        yield
    finally:
        _collector_users -= 1
        if _collector_users == 0:  # the last one
            gc.set_threshold(*_process_threshold)


_collector_users = 0
"""Workers of this process running with _collector_for_batches."""
_process_threshold: tuple[int, int, int] = gc.get_threshold()


def _producer_links(msgs: Sequence[Msg]) -> list[Link]:
    links = []
    for msg in msgs[:_MAX_SPAN_LINKS]:
        parent = parse_traceparent((msg.headers or {}).get("traceparent"))
        if parent is not None:
            context = SpanContext(
                trace_id=int(parent.trace_id, 16),
                span_id=int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(parent.flags & 0x01),
            )
            links.append(Link(context))
    return links
