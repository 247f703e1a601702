"""ingest/announce.py: how one committed append is cut into announcement parts, and how a replica rebuilds the
stored events from them. Pure: no servers."""

from __future__ import annotations

import datetime as dt

from audit_service.core.records import LOG_COLUMNS, content_from_event, seal_canonical
from audit_service.core.stored_event import event_from_canonical, row_to_event
from audit_service.ingest.announce import announcement_parts
from audit_service.store.append import SealedEvent

from ..factories import make_event, stamp

RECORDED_AT = dt.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=dt.UTC)


def sealed(tenants: list[str], first_position: int = 11, message: str = "") -> list[tuple[SealedEvent, tuple]]:
    """(what the appender hands the announcer, the row it stores) for one event per tenant given."""
    events = []
    for offset, tenant in enumerate(tenants):
        content = content_from_event(stamp(make_event(tenant=tenant, message=message or f"event {offset}")))
        prev_hash = bytes([offset]) * 32
        canonical, digest, row = seal_canonical(first_position + offset, RECORDED_AT, content, prev_hash)
        events.append((SealedEvent(tenant, canonical, prev_hash, digest), row))
    return events


def test_one_part_per_tenant_with_its_events_in_position_order():
    events = sealed(["acme", "globex", "acme", "acme"])
    parts = list(announcement_parts(10, 14, [event for event, _ in events], max_bytes=1 << 20))
    assert [tenant for tenant, _ in parts] == ["acme", "globex"]
    acme, globex = parts[0][1], parts[1][1]
    assert [event.canonical for event in acme.events] == [events[i][0].canonical for i in (0, 2, 3)]
    assert [event.hash for event in globex.events] == [events[1][0].hash]
    assert all((part.prev_position, part.last_position) == (10, 14) for _, part in parts)


def test_a_replica_rebuilds_exactly_the_event_the_log_returns():
    for event, row in sealed(["acme", "globex"]):
        rebuilt = event_from_canonical(event.canonical, event.prev_hash, event.hash)
        assert rebuilt == row_to_event(dict(zip(LOG_COLUMNS, row, strict=True)))
        assert rebuilt.hash == event.hash.hex() and rebuilt.prev_hash == event.prev_hash.hex()
        assert rebuilt.recorded_at.ToDatetime(dt.UTC) == RECORDED_AT and rebuilt.position in (11, 12)


def test_a_large_share_is_split_and_an_event_too_large_alone_is_omitted():
    events = [event for event, _ in sealed(["acme"] * 6, message="x" * 3000)]
    parts = [part for _, part in announcement_parts(10, 16, events, max_bytes=8000)]
    assert len(parts) >= 3
    assert [e.canonical for part in parts for e in part.events] == [event.canonical for event in events]
    assert all(part.ByteSize() <= 8000 for part in parts)

    [(_, alone)] = announcement_parts(10, 16, events, max_bytes=2000)
    assert not alone.events and alone.omitted_events == 6
