"""Announces each committed append on core NATS (<prefix>.committed.<tenant>), for the API replicas' live tails.

Best effort by design: core NATS delivers at most once, and a replica that misses a part reads those positions
from the log (see core/sequencer.py). So a failed announcement is logged, never retried, and never holds up
ingestion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import nats.errors
from audit.v1 import committed_pb2, event_pb2
from nats.aio.client import Client as NatsClient

from ..core.records import LOG_COLUMNS
from ..core.stored_event import row_to_event

log = logging.getLogger(__name__)

_FRAMING_BYTES = 64
"""Room in a part for its positions, omitted_events and each event's field tag and length prefix."""
_TENANT = LOG_COLUMNS.index("tenant")


def announcement_parts(
    prev_position: int, last_position: int, rows: Sequence[tuple[Any, ...]], max_bytes: int
) -> Iterator[tuple[str, committed_pb2.CommittedBatch]]:
    """The parts announcing one append of sealed `rows` (LOG_COLUMNS order): (tenant, part), each part at most
    `max_bytes` serialized, one tenant's events in position order; an event too large on its own is omitted."""
    by_tenant: dict[str, list[event_pb2.AuditEvent]] = {}
    for row in rows:
        by_tenant.setdefault(row[_TENANT], []).append(row_to_event(dict(zip(LOG_COLUMNS, row, strict=True))))
    for tenant, events in by_tenant.items():
        part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=last_position)
        size = _FRAMING_BYTES
        for event in events:
            event_size = event.ByteSize() + _FRAMING_BYTES
            if event_size > max_bytes:
                part.omitted_events += 1
                continue
            if size + event_size > max_bytes:
                yield tenant, part
                part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=last_position)
                size = _FRAMING_BYTES
            part.events.append(event)
            size += event_size
        yield tenant, part


class Announcer:
    """Publishes the announcements of one worker."""

    def __init__(self, nc: NatsClient, subject_prefix: str) -> None:
        self._nc = nc
        self._prefix = subject_prefix

    async def announce(self, prev_position: int, last_position: int, rows: Sequence[tuple[Any, ...]]) -> None:
        """Announces an append that has committed (nothing when it stored nothing)."""
        if last_position == prev_position:
            return
        try:
            for tenant, part in announcement_parts(prev_position, last_position, rows, self._nc.max_payload):
                await self._nc.publish(f"{self._prefix}.{tenant}", part.SerializeToString())
        except (nats.errors.Error, OSError) as error:
            log.warning(
                "could not announce positions %d..%d (%s: %s); API replicas will read them from the log",
                prev_position + 1,
                last_position,
                type(error).__name__,
                error,
            )
