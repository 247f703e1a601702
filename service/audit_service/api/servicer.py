"""AuditService: reads of the log over gRPC. Failures are raised as domain errors (see api/errors.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
from audit.v1 import audit_service_pb2 as pb
from audit.v1 import audit_service_pb2_grpc as pb_grpc
from audit_client.validation import TENANT_PATTERN
from grpc import aio

from ..core.page_token import PageToken, decode_page_token, encode_page_token, query_digest
from ..errors import InvalidArgumentError, NotFoundError, NotImplementedYetError
from ..store import queries
from .convert import row_to_event

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size_of(request: pb.ListEventsRequest) -> int:
    """AIP-158: 0 means the default, larger than the maximum is coerced to it, negative is an error."""
    if request.page_size < 0:
        raise InvalidArgumentError("page_size", f"must not be negative, got {request.page_size}")
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _tenant_of(request_filter: pb.EventFilter) -> str:
    tenant = request_filter.tenant
    if tenant and not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidArgumentError("filter.tenant", f"must match {TENANT_PATTERN.pattern}")
    return tenant


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ListEvents(self, request: pb.ListEventsRequest, context: aio.ServicerContext) -> pb.ListEventsResponse:
        if request.order not in pb.Order.values():
            raise InvalidArgumentError("order", f"unknown value {request.order}")
        limit = page_size_of(request)
        tenant = _tenant_of(request.filter)
        newest_first = request.order != pb.ORDER_OLDEST_FIRST
        digest = query_digest(request.filter.SerializeToString(deterministic=True), bytes([newest_first]))
        after = decode_page_token(request.page_token, digest).after_position if request.page_token else None
        rows = await queries.list_events(
            self._pool,
            queries.PageQuery(tenant=tenant, newest_first=newest_first, after_position=after, limit=limit + 1),
        )
        has_more = len(rows) > limit
        rows = rows[:limit]
        next_token = encode_page_token(PageToken(rows[-1]["position"], digest)) if has_more else ""
        return pb.ListEventsResponse(events=[row_to_event(row) for row in rows], next_page_token=next_token)

    async def GetEvent(self, request: pb.GetEventRequest, context: aio.ServicerContext) -> pb.GetEventResponse:
        if not request.event_id:
            raise InvalidArgumentError("event_id", "is required")
        try:
            event_id = str(uuid.UUID(request.event_id))
        except ValueError:
            raise InvalidArgumentError("event_id", f"is not a UUID: {request.event_id[:64]!r}") from None
        row = await queries.get_event(self._pool, event_id)
        if row is None:
            raise NotFoundError(f"event {event_id} not found")
        return pb.GetEventResponse(event=row_to_event(row))

    async def CountEvents(self, request: pb.CountEventsRequest, context: aio.ServicerContext) -> pb.CountEventsResponse:
        return pb.CountEventsResponse(total=await queries.count_events(self._pool, _tenant_of(request.filter)))

    async def TailEvents(
        self, request: pb.TailEventsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.TailEventsResponse]:
        raise NotImplementedYetError(
            "TailEvents is not served by this version yet; poll ListEvents with ORDER_OLDEST_FIRST"
        )
        yield  # makes this an async generator, as the stream handler expects
