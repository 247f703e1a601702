"""The pure parts of the metrics: what the observable gauges report, from state their owners keep."""

from __future__ import annotations

from audit_service.ingest.lag import ConsumerLag
from audit_service.telemetry.metrics import ObservedValues
from nats.aio.msg import Msg
from opentelemetry.metrics import CallbackOptions


def delivered(stored_at_seconds: float, pending: int, sequence: int = 1) -> Msg:
    """A message as a pull consumer delivers it: its metadata is in its $JS.ACK reply subject."""
    stored_ns = int(stored_at_seconds * 1_000_000_000)
    return Msg(
        _client=None,
        subject="audit.events.acme",
        reply=f"$JS.ACK.AUDIT_EVENTS.audit-ingest.1.{sequence}.{sequence}.{stored_ns}.{pending}",
    )


def observed(values: ObservedValues) -> list[tuple[dict, float]]:
    return [(dict(o.attributes or {}), o.value) for o in values(CallbackOptions())]


def test_each_source_reports_until_it_is_removed_and_nothing_while_it_knows_nothing() -> None:
    values = ObservedValues()
    state = {"a": None}
    remove_a = values.add({"consumer": "a"}, lambda: state["a"])
    remove_b = values.add({"consumer": "b"}, lambda: 7)
    assert observed(values) == [({"consumer": "b"}, 7)]
    state["a"] = 3
    assert observed(values) == [({"consumer": "a"}, 3), ({"consumer": "b"}, 7)]
    remove_a()
    remove_a()  # idempotent
    assert observed(values) == [({"consumer": "b"}, 7)]
    remove_b()
    assert observed(values) == []


def lag(clock: list[float]) -> ConsumerLag:
    return ConsumerLag(None, "AUDIT_EVENTS", "audit-ingest", {}, refresh_seconds=5, clock=lambda: clock[0])


def test_the_oldest_age_is_that_of_the_oldest_batch_in_hand() -> None:
    now = [1000.0]
    backlog = lag(now)
    assert backlog.oldest_age() is None, "nothing known yet"
    backlog.hold(1, [delivered(990.0, pending=50), delivered(991.0, pending=48)])
    backlog.hold(2, [delivered(995.0, pending=40)])
    assert (backlog.oldest_age(), backlog.pending) == (10.0, 40)
    now[0] = 1004.0
    assert backlog.oldest_age() == 14.0, "it grows while the batch is held (the database is away)"
    backlog.release(1)
    assert backlog.oldest_age() == 9.0
    backlog.release(2)
    assert backlog.oldest_age() == 9.0, "messages still pending: at least as old as the last batch seen"
    backlog.pending = 0
    assert backlog.oldest_age() == 0.0, "nothing in hand and nothing pending"


def test_a_clock_behind_the_servers_gives_no_negative_age() -> None:
    backlog = lag([100.0])
    backlog.hold(1, [delivered(130.0, pending=0)])
    assert backlog.oldest_age() == 0.0
