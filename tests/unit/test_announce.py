"""ingest/announce.py: how one committed append is cut into announcement parts. Pure: no servers."""

from __future__ import annotations

import datetime as dt

from audit_service.core.records import content_from_event, seal
from audit_service.ingest.announce import announcement_parts

from ..factories import make_event, stamp

RECORDED_AT = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)


def sealed_rows(tenants: list[str], first_position: int = 11, message: str = "") -> list[tuple]:
    rows = []
    for offset, tenant in enumerate(tenants):
        event = stamp(make_event(tenant=tenant, message=message or f"event {offset}"))
        rows.append(seal(first_position + offset, RECORDED_AT, content_from_event(event), bytes(32))[1])
    return rows


def test_one_part_per_tenant_with_the_stored_events_in_position_order():
    rows = sealed_rows(["acme", "globex", "acme", "acme"])
    parts = list(announcement_parts(10, 14, rows, max_bytes=1 << 20))
    assert [tenant for tenant, _ in parts] == ["acme", "globex"]
    acme, globex = parts[0][1], parts[1][1]
    assert [event.position for event in acme.events] == [11, 13, 14]
    assert [event.position for event in globex.events] == [12]
    assert all((part.prev_position, part.last_position) == (10, 14) for _, part in parts)
    assert acme.events[0].hash == rows[0][-1].hex() and acme.events[0].tenant == "acme"
    assert acme.events[0].recorded_at.ToDatetime(dt.UTC) == RECORDED_AT


def test_a_large_share_is_split_and_an_event_too_large_alone_is_omitted():
    rows = sealed_rows(["acme"] * 6, message="x" * 3000)
    parts = [part for _, part in announcement_parts(10, 16, rows, max_bytes=8000)]
    assert len(parts) == 3
    assert [event.position for part in parts for event in part.events] == list(range(11, 17))
    assert all(part.ByteSize() <= 8000 for part in parts)

    [(_, alone)] = announcement_parts(10, 16, rows, max_bytes=2000)
    assert not alone.events and alone.omitted_events == 6
