"""AuditService: reads of the log over gRPC. Failures are raised as domain errors (see api/errors.py); the
caller was authenticated by api/auth.py and everything is scoped to what it may see."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import asyncpg
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc as pb_grpc
from audit.v1 import event_pb2
from grpc import aio

from ..auth.tokens import Principal
from ..config import ApiConfig, TailConfig
from ..core.counts import MAX_BUCKETS, CountSource
from ..core.event_filter import UNRESTRICTED, Scope, compile_filter, filter_tenant, timestamp_micros
from ..core.filters import Expr
from ..core.page_token import PageToken, decode_page_token, encode_page_token, query_digest
from ..core.records import micros_to_datetime
from ..core.stored_event import row_to_event
from ..errors import InvalidArgumentError, NotFoundError, PermissionDeniedError, UnavailableError
from ..store import queries
from ..telemetry import metrics
from . import export, history, verification
from .auth import current_caller
from .live_feed import LiveFeed
from .paging import caller_identity, page_size_of
from .read_budget import ReadBudget
from .tail import TailPlan, TailStream

MIN_INTERVAL_MICROS = 1_000_000
MAX_INTERVAL_SECONDS = 315_576_000_000
"""10,000 years: google.protobuf.Duration's range."""
_PAGE_RESERVE_BYTES = 1024
"""Room left in a page for next_page_token, total_size and framing."""
_EVENT_FRAMING_BYTES = 6
"""Field tag and length prefix of one event in a page."""
_GROUP_BOUND_BYTES = 17
"""At most, one GroupCount's bytes besides its key: tags, length prefixes and a 10-byte count."""
_BUCKET_BOUND_BYTES = 48
"""At most, one CountBucket's bytes besides its groups."""

_GROUP_BY = {
    pb.GROUP_BY_UNSPECIFIED: None,
    pb.GROUP_BY_ACTOR: "actor",
    pb.GROUP_BY_ACTION: "action",
    pb.GROUP_BY_RESOURCE_TYPE: "resource_type",
    pb.GROUP_BY_OUTCOME: "outcome",
}


def scope_of(caller: Principal | None, request_filter: pb.EventFilter) -> Scope:
    """What the caller may see; asking for another tenant is PERMISSION_DENIED."""
    tenant = filter_tenant(request_filter)
    if caller is None:
        return UNRESTRICTED
    if tenant is not None and tenant != caller.tenant:
        raise PermissionDeniedError(f"filter.tenant: the caller's token is for tenant {caller.tenant!r}")
    return Scope(tenant=caller.tenant, actor_id=None if caller.admin else caller.subject)


_EXPORT_FORMAT_ATTRIBUTES = {
    number: {"format": pb.ExportFormat.Name(number).removeprefix("EXPORT_FORMAT_").lower()}
    for number in pb.ExportFormat.values()
}
"""audit.export.sent's attributes by format: csv, ndjson, log_lines."""

_OUTCOME_NAMES = {str(number): event_pb2.Outcome.Name(number) for number in event_pb2.Outcome.values()}


def count_response_bound(result: queries.CountResult) -> int:
    """An upper bound of the CountEventsResponse's size in bytes, in time linear in the buckets (not groups)."""
    longest_key = max((len(key.encode()) for key, _ in result.groups), default=0) + len("OUTCOME_UNSPECIFIED")
    groups = len(result.groups) + sum(len(bucket.keys) for bucket in result.buckets)
    return 64 + len(result.buckets) * _BUCKET_BOUND_BYTES + groups * (longest_key + _GROUP_BOUND_BYTES)


def _add_groups(target: Any, groups: Iterable[tuple[str, int]], rename: Mapping[str, str] | None) -> None:
    add = target.add
    if rename is not None:
        groups = ((rename.get(key, key), count) for key, count in groups)
    for key, count in groups:
        add(key=key, count=count)


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_response_bytes: int,
        feed: LiveFeed | None = None,
        tail_config: TailConfig | None = None,
        checkpoint_keys: verification.CheckpointKeys | None = None,
        read_budget: ReadBudget | None = None,
    ) -> None:
        """
        Args:
            pool: connections of the service role.
            max_response_bytes: the largest response message (AUDIT_MAX_RESPONSE_BYTES).
            feed: committed appends for TailEvents (UNAVAILABLE without one).
            tail_config: TailEvents settings.
            checkpoint_keys: the public keys VerifyChain checks signed checkpoints with (none: not checked).
            read_budget: the bytes of events this process's reads may hold at once (AUDIT_READ_BUFFER_BYTES).
        """
        self._pool = pool
        self._max_response_bytes = max_response_bytes
        self._read_budget = read_budget or ReadBudget(ApiConfig().read_buffer_bytes)
        self._feed = feed
        self._tail_config = tail_config or TailConfig()
        self._checkpoint_keys = checkpoint_keys

    def _where(self, request_filter: pb.EventFilter) -> tuple[Principal | None, Expr]:
        caller = current_caller()
        return caller, compile_filter(request_filter, scope_of(caller, request_filter))

    async def ListEvents(self, request: pb.ListEventsRequest, context: aio.ServicerContext) -> pb.ListEventsResponse:
        if request.order not in pb.Order.values():
            raise InvalidArgumentError("order", f"unknown value {request.order}")
        limit = page_size_of(request)
        caller, where = self._where(request.filter)
        newest_first = request.order != pb.ORDER_OLDEST_FIRST
        # The token is bound to the filter, the order and the caller: reusing it elsewhere is refused.
        digest = query_digest(
            request.filter.SerializeToString(deterministic=True), bytes([newest_first]), caller_identity(caller)
        )
        after = decode_page_token(request.page_token, digest).after_position if request.page_token else None
        # A page holds at most max_response_bytes of events (as stored), cut in PostgreSQL; the process waits for
        # room in its read budget first. It also ends before its messages outgrow the response limit (AIP-158
        # allows short pages): 1,000 events with large states can be far more than the 4 MiB a default gRPC
        # client accepts. One event always fits.
        page_bytes = self._max_response_bytes
        async with self._read_budget.reserve(page_bytes) as reservation:
            page = await queries.list_events(
                self._pool,
                queries.PageQuery(
                    where=where, newest_first=newest_first, after_position=after, limit=limit + 1, max_bytes=page_bytes
                ),
            )
            reservation.keep(page.size)
            events = []
            room = self._max_response_bytes - _PAGE_RESERVE_BYTES
            for row in page.rows[:limit]:
                event = row_to_event(row)
                room -= event.ByteSize() + _EVENT_FRAMING_BYTES
                if room < 0 and events:
                    break
                events.append(event)
        has_more = page.found > len(events)
        next_token = encode_page_token(PageToken(events[-1].position, digest)) if has_more else ""
        response = pb.ListEventsResponse(events=events, next_page_token=next_token)
        if request.include_total_size:
            response.total_size = (await queries.count_events(self._pool, queries.CountQuery(where=where))).total
        return response

    async def GetEvent(self, request: pb.GetEventRequest, context: aio.ServicerContext) -> pb.GetEventResponse:
        if not request.event_id:
            raise InvalidArgumentError("event_id", "is required")
        try:
            event_id = str(uuid.UUID(request.event_id))
        except ValueError:
            raise InvalidArgumentError("event_id", f"is not a UUID: {request.event_id[:64]!r}") from None
        caller = current_caller()
        scope = UNRESTRICTED if caller is None else scope_of(caller, pb.EventFilter())
        row = await queries.get_event(self._pool, event_id, scope.expr())
        if row is None:  # also when it exists but the caller may not see it: its existence is not disclosed
            raise NotFoundError(f"event {event_id} not found")
        response = pb.GetEventResponse(event=row_to_event(row))
        history.fill_diff(response, row)
        return response

    async def ListResourceHistory(
        self, request: pb.ListResourceHistoryRequest, context: aio.ServicerContext
    ) -> pb.ListResourceHistoryResponse:
        return await history.list_resource_history(
            self._pool,
            request,
            current_caller(),
            max_response_bytes=self._max_response_bytes,
            read_budget=self._read_budget,
        )

    async def ExportEvents(
        self, request: pb.ExportEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.ExportEventsResponse]:
        _, where = self._where(request.filter)
        async with contextlib.aclosing(
            export.export_events(
                self._pool, request, where, max_response_bytes=self._max_response_bytes, read_budget=self._read_budget
            )
        ) as chunks:
            attributes = _EXPORT_FORMAT_ATTRIBUTES.get(request.format)
            async for chunk in chunks:
                yield chunk
                # Counted once gRPC has taken the chunk (the generator resumes only then).
                metrics.EXPORT_SENT.add(len(chunk.data), attributes)

    async def GetCaller(self, request: pb.GetCallerRequest, context: aio.ServicerContext) -> pb.GetCallerResponse:
        caller = current_caller()
        if caller is None:
            return pb.GetCallerResponse(authenticated=False)
        return pb.GetCallerResponse(
            authenticated=True, tenant=caller.tenant, subject=caller.subject, admin=caller.admin
        )

    async def VerifyChain(self, request: pb.VerifyChainRequest, context: aio.ServicerContext) -> pb.VerifyChainResponse:
        return await verification.verify_chain(
            self._pool, request, current_caller(), self._checkpoint_keys, read_budget=self._read_budget
        )

    async def CountEvents(self, request: pb.CountEventsRequest, context: aio.ServicerContext) -> pb.CountEventsResponse:
        if request.group_by not in _GROUP_BY:
            raise InvalidArgumentError("group_by", f"unknown value {request.group_by}")
        group_by = _GROUP_BY[request.group_by]
        _, where = self._where(request.filter)
        histogram = None
        if request.HasField("interval"):
            histogram = self._histogram_range(request)
        result = await queries.count_events(
            self._pool, queries.CountQuery(where=where, group_by=group_by, histogram=histogram)
        )
        response = self._count_response(result, group_by)
        # Refused rather than sent too big for the client (the bound is cheap; the exact size only when it is near).
        limit = self._max_response_bytes
        if count_response_bound(result) > limit and (size := response.ByteSize()) > limit:
            raise InvalidArgumentError(
                "interval" if result.buckets else "group_by",
                f"the answer would be {size:,} bytes, over the service's {limit:,}-byte response limit; use a wider "
                "interval, a shorter time range or no group_by",
            )
        return response

    @staticmethod
    def _count_response(result: queries.CountResult, group_by: str | None) -> pb.CountEventsResponse:
        rename = _OUTCOME_NAMES if group_by == "outcome" else None
        response = pb.CountEventsResponse(
            total=result.total,
            source=pb.COUNT_SOURCE_LOG if result.source is CountSource.LOG else pb.COUNT_SOURCE_PROJECTION,
        )
        _add_groups(response.groups, result.groups, rename)
        # add() in place: a month of hourly buckets by action is ~10^4 messages, and building them apart to
        # extend() would copy each one again.
        for bucket in result.buckets:
            message = response.buckets.add(count=bucket.count)
            message.start_time.seconds, micros = divmod(bucket.start, 1_000_000)
            message.start_time.nanos = micros * 1000
            _add_groups(message.groups, zip(bucket.keys, bucket.counts, strict=True), rename)
        return response

    @staticmethod
    def _histogram_range(request: pb.CountEventsRequest) -> tuple[int, int, int]:
        interval = request.interval
        if interval.nanos < 0 or interval.seconds < 0 or not -999_999_999 <= interval.nanos <= 999_999_999:
            raise InvalidArgumentError("interval", "is not a valid positive duration")
        if interval.seconds > MAX_INTERVAL_SECONDS:
            raise InvalidArgumentError("interval", f"is longer than {MAX_INTERVAL_SECONDS}s (10,000 years)")
        interval_micros = interval.seconds * 1_000_000 + interval.nanos // 1000
        if interval_micros < MIN_INTERVAL_MICROS:
            raise InvalidArgumentError("interval", "must be at least 1s")
        if not (request.filter.HasField("start_time") and request.filter.HasField("end_time")):
            missing = "filter.start_time" if not request.filter.HasField("start_time") else "filter.end_time"
            raise InvalidArgumentError(missing, "is required with an interval")
        start = timestamp_micros(request.filter.start_time, "filter.start_time")
        end = timestamp_micros(request.filter.end_time, "filter.end_time")
        if -(-(end - start) // interval_micros) > MAX_BUCKETS:
            raise InvalidArgumentError("interval", f"gives more than {MAX_BUCKETS} buckets over the time range")
        return start, end, interval_micros

    async def TailEvents(
        self, request: pb.TailEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.TailEventsResponse]:
        if self._feed is None:
            raise UnavailableError("this server was started without a live feed")
        caller = current_caller()
        scope = scope_of(caller, request.filter)
        where = compile_filter(request.filter, scope)
        after_position, recorded_from = await self._tail_start(request)
        tenant = scope.tenant or filter_tenant(request.filter)
        plan = TailPlan(where=where, tenant=tenant, after_position=after_position, recorded_from=recorded_from)
        stream = TailStream(
            plan, self._feed, self._pool, self._tail_config, self._max_response_bytes, read_budget=self._read_budget
        )
        # grpc never closes a handler's generator itself: when the call ends mid-write, leave the feed at once.
        # The call's end is also where an open tail stops counting, however it ends.
        metrics.TAILS_OPEN.add(1)
        context.add_done_callback(lambda _: (stream.leave(), metrics.TAILS_OPEN.add(-1)))
        async with contextlib.aclosing(stream.responses()) as responses:  # leaves the feed as soon as the call ends
            async for response in responses:
                yield response

    async def _tail_start(self, request: pb.TailEventsRequest) -> tuple[int | None, int | None]:
        """The position a tail starts after (None: now; the stream checks it against the log's head) and, for a
        start at from_time, that time in µs."""
        start = request.WhichOneof("start")
        if start == "from_time":
            from_time = timestamp_micros(request.from_time, "from_time")
            return await queries.last_position_before(self._pool, micros_to_datetime(from_time)), from_time
        if start == "after_position":
            if request.after_position < 0:
                raise InvalidArgumentError("after_position", f"must not be negative, got {request.after_position}")
            return request.after_position, None
        return None, None
