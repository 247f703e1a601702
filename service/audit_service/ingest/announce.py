"""Announces each committed append on core NATS (<prefix>.committed.<tenant>), for the API replicas' live tails.

Best effort by design: core NATS delivers at most once, and a replica that misses a part reads those positions
from the log (see core/sequencer.py). So a failed announcement is logged, never retried, and never holds up
ingestion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import nats.errors
from audit.v1 import committed_pb2
from nats.aio.client import Client as NatsClient

from ..store.append import SealedEvent

log = logging.getLogger(__name__)

_FRAMING_BYTES = 16
"""Room for one event's tags and length prefixes in a part."""
_PART_BYTES = 64
"""Room for a part's own fields."""


def announcement_parts(
    prev_position: int, last_position: int, sealed: Sequence[SealedEvent], max_bytes: int
) -> Iterator[tuple[str, committed_pb2.CommittedBatch]]:
    """The parts announcing one append: (tenant, part), each part at most `max_bytes` serialized, one tenant's
    events in position order; an event too large on its own is omitted (the replicas read it from the log)."""
    by_tenant: dict[str, list[SealedEvent]] = {}
    for event in sealed:
        by_tenant.setdefault(event.tenant, []).append(event)
    for tenant, events in by_tenant.items():
        part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=last_position)
        size = _PART_BYTES
        for event in events:
            event_size = len(event.canonical) + len(event.prev_hash) + len(event.hash) + _FRAMING_BYTES
            if event_size + _PART_BYTES > max_bytes:
                part.omitted_events += 1
                continue
            if size + event_size > max_bytes:
                yield tenant, part
                part = committed_pb2.CommittedBatch(prev_position=prev_position, last_position=last_position)
                size = _PART_BYTES
            part.events.add(canonical=event.canonical, prev_hash=event.prev_hash, hash=event.hash)
            size += event_size
        yield tenant, part


class Announcer:
    """Publishes the announcements of one worker."""

    def __init__(self, nc: NatsClient, subject_prefix: str) -> None:
        self._nc = nc
        self._prefix = subject_prefix

    async def announce(self, prev_position: int, last_position: int, sealed: Sequence[SealedEvent]) -> None:
        """Announces an append that has committed (nothing when it stored nothing)."""
        if last_position == prev_position:
            return
        try:
            for tenant, part in announcement_parts(prev_position, last_position, sealed, self._nc.max_payload):
                await self._nc.publish(f"{self._prefix}.{tenant}", part.SerializeToString())
        except (nats.errors.Error, OSError) as error:
            log.warning(
                "could not announce positions %d..%d (%s: %s); API replicas will read them from the log",
                prev_position + 1,
                last_position,
                type(error).__name__,
                error,
            )
