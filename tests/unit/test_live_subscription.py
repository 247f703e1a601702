"""api/live_feed.LiveSubscription: a subscriber's buffer is bounded in events and in bytes, and overflowing it
frees it. No servers: the subscription is plain state."""

from __future__ import annotations

from audit.v1 import event_pb2
from audit_service.api.live_feed import LiveEvent, LiveSubscription


def events(first: int, count: int, size: int) -> list[LiveEvent]:
    return [LiveEvent(event_pb2.AuditEvent(position=p), {}, size) for p in range(first, first + count)]


def test_offers_are_buffered_until_taken_with_the_position_examined():
    subscription = LiveSubscription(tenant="acme", max_buffered=10, max_buffered_bytes=10_000, examined=0)
    subscription.offer(3, events(1, 3, 100))
    subscription.offer(5, [])  # another tenant's append: examined moves on, nothing is buffered
    taken, examined = subscription.take()
    assert [[item.position for item in chunk] for _, chunk in taken] == [[1, 2, 3]] and examined == 5
    assert subscription.take() == ([], 5)


def test_too_many_events_overflow_and_free_the_buffer():
    subscription = LiveSubscription(tenant=None, max_buffered=5, max_buffered_bytes=10_000, examined=0)
    subscription.offer(4, events(1, 4, 10))
    subscription.offer(8, events(5, 4, 10))
    assert subscription.overflowed and not subscription.pending and subscription.examined == 4
    subscription.offer(9, events(9, 1, 10))  # ignored until the stream resyncs from the log
    assert not subscription.pending and subscription.examined == 4


def test_too_many_bytes_overflow_too():
    subscription = LiveSubscription(tenant=None, max_buffered=1000, max_buffered_bytes=1_000, examined=0)
    subscription.offer(2, events(1, 2, 400))
    assert not subscription.overflowed
    subscription.offer(4, events(3, 2, 400))
    assert subscription.overflowed and subscription.buffered_bytes == 0
