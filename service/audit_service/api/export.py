"""ExportEvents: every event matching a filter as CSV, NDJSON or log lines, streamed in chunks.

The export is a snapshot: it holds the matching events up to the log's head when it started (through_position),
read in keyset pages oldest first, so its cost per event does not grow with the export's length. Nothing
accumulates: one page is encoded while the next one is read, and each chunk is yielded as soon as it is full;
gRPC holds the generator at `yield` while the client is slow, so memory stays flat whatever the size.

Chunks hold whole lines, about CHUNK_BYTES each and never more than the response limit. The one exception is a
line larger than the limit by itself (a huge event under a small AUDIT_MAX_RESPONSE_BYTES): it is cut, at a
UTF-8 character boundary, over consecutive chunks, the ones before its end carrying events=0; concatenating
the chunks still gives the export. The CSV header comes first when after_position is 0, and not in a resumed
export (after_position > 0), so the parts of a resumed export concatenate into one CSV file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
from audit.v1 import audit_service_pb2 as pb
from opentelemetry import trace

from ..core.export_formats import Row, csv_header, csv_line, log_line
from ..core.filters import Expr
from ..core.ndjson import event_line
from ..errors import InvalidArgumentError
from ..store import queries
from .read_budget import ReadBudget

tracer = trace.get_tracer("audit_service.api.export")

CHUNK_BYTES = 256 * 1024
"""Data per chunk, at most (less when the response limit is lower)."""
PAGE_EVENTS = 1000
"""Most events read per query."""
PAGE_BYTES = 2 * 1024 * 1024
"""Most bytes of events read per query (plus one event), cut in PostgreSQL: an export holds its page's lines and
the next page's while its reader is slow, a few MiB even when every event is near the 256 KiB event limit."""
_RESPONSE_RESERVE_BYTES = 64
"""Room left in a response for its counters and framing."""

_ENCODERS: dict[int, Callable[[Row], bytes]] = {
    pb.EXPORT_FORMAT_CSV: csv_line,
    pb.EXPORT_FORMAT_NDJSON: event_line,
    pb.EXPORT_FORMAT_LOG_LINES: log_line,
}


def _encoder(request: pb.ExportEventsRequest) -> Callable[[Row], bytes]:
    if request.format == pb.EXPORT_FORMAT_UNSPECIFIED:
        raise InvalidArgumentError(
            "format", "is required: EXPORT_FORMAT_CSV, EXPORT_FORMAT_NDJSON or EXPORT_FORMAT_LOG_LINES"
        )
    if request.format not in _ENCODERS:
        raise InvalidArgumentError("format", f"unknown value {request.format}")
    return _ENCODERS[request.format]


class _Chunker:
    """Packs lines into responses of at most `size` data bytes, cutting only a line that is larger alone."""

    def __init__(self, size: int, last_position: int, through_position: int) -> None:
        self._size = size
        self._parts: list[bytes] = []
        self._bytes = 0
        self._events = 0
        self.last_position = last_position
        self.through_position = through_position

    def add(self, line: bytes, position: int | None) -> Iterator[pb.ExportEventsResponse]:
        """Adds one line (of the event at `position`; None for the header); yields the chunks it completes."""
        if self._bytes + len(line) > self._size and self._parts:
            yield self.flush()
        while len(line) > self._size:  # alone larger than a chunk: its head goes out now, without the event
            cut = self._size
            while line[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
                cut -= 1
            yield self._response(line[:cut], 0)
            line = line[cut:]
        self._parts.append(line)
        self._bytes += len(line)
        if position is not None:
            self._events += 1
            self.last_position = position

    def flush(self) -> pb.ExportEventsResponse:
        response = self._response(b"".join(self._parts), self._events)
        self._parts, self._bytes, self._events = [], 0, 0
        return response

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def _response(self, data: bytes, events: int) -> pb.ExportEventsResponse:
        return pb.ExportEventsResponse(
            data=data, events=events, last_position=self.last_position, through_position=self.through_position
        )


async def export_events(
    pool: asyncpg.Pool,
    request: pb.ExportEventsRequest,
    where: Expr,
    *,
    max_response_bytes: int,
    read_budget: ReadBudget,
) -> AsyncIterator[pb.ExportEventsResponse]:
    """The export's chunks (at least one, so the client learns through_position even when nothing matches).

    Args:
        pool: connections of the service role.
        request: format and after_position (the filter is already compiled into `where`).
        where: the filter, with the caller's access scope applied.
        max_response_bytes: the largest response message (AUDIT_MAX_RESPONSE_BYTES).
        read_budget: the process's bound on the events its reads hold; held while a page is read and encoded,
            never while a chunk waits for the client.
    """
    encode = _encoder(request)
    if request.after_position < 0:
        raise InvalidArgumentError("after_position", f"must not be negative, got {request.after_position}")
    through = await queries.log_head(pool)
    chunker = _Chunker(min(CHUNK_BYTES, max_response_bytes - _RESPONSE_RESERVE_BYTES), request.after_position, through)
    if request.format == pb.EXPORT_FORMAT_CSV and request.after_position == 0:
        for chunk in chunker.add(csv_header(), None):
            yield chunk

    async def encoded_page(cursor: int) -> tuple[list[tuple[bytes, int]], bool]:
        """The lines of the next page with their positions, and whether more may follow."""
        query = queries.PageQuery(
            where,
            newest_first=False,
            after_position=cursor,
            limit=PAGE_EVENTS,
            max_bytes=PAGE_BYTES,
            up_to_position=through,
        )
        with tracer.start_as_current_span("audit.export page", attributes={"audit.after_position": cursor}) as span:
            async with read_budget.reserve(PAGE_BYTES) as reservation:
                page = await queries.list_events(pool, query)
                reservation.keep(page.size)
                lines = [(encode(row), row["position"]) for row in page.rows]
            span.set_attribute("audit.events", len(lines))
        return lines, page.cut or len(page.rows) == PAGE_EVENTS

    def read_after(cursor: int) -> asyncio.Task[tuple[list[tuple[bytes, int]], bool]]:
        return asyncio.create_task(encoded_page(cursor))

    sent_any = False
    pending = read_after(request.after_position) if request.after_position < through else None
    try:
        while pending is not None:
            lines, more = await pending
            # The next page is read and encoded while this one is sent.
            pending = read_after(lines[-1][1]) if more else None
            for line, position in lines:
                for chunk in chunker.add(line, position):
                    sent_any = True
                    yield chunk
        if chunker.pending or not sent_any:
            yield chunker.flush()
    finally:
        if pending is not None:  # the client went away, or a read failed: no page is left behind
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
