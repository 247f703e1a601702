"""core/sequencer.py: announced appends are released in position order, exactly once, and what never arrives
is named as a hole. Pure: no servers."""

from __future__ import annotations

from audit_service.core.sequencer import Append, HoleTimer, Sequencer
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def announced_log(draw):
    """Appends of a log from position 0, split into parts, delivered shuffled with some parts lost."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=25))
    parts = []
    prev = 0
    for size in sizes:
        positions = list(range(prev + 1, prev + size + 1))
        cut = draw(st.integers(0, size))  # two parts (two tenants), the second possibly empty
        for chunk in (positions[:cut], positions[cut:]):
            if chunk:
                omitted = draw(st.integers(0, 1)) if len(chunk) == 1 and draw(st.booleans()) else 0
                parts.append((prev, prev + size, [] if omitted else chunk, omitted))
        prev += size
    order = draw(st.permutations(parts))
    lost = draw(st.sets(st.integers(0, max(len(parts) - 1, 0)), max_size=3))
    return prev, [part for index, part in enumerate(order) if index not in lost]


def drain(sequencer: Sequencer[int], released: list[int], read_from_log) -> None:
    for append in sequencer.ready():
        if append.events is None:
            released.extend(read_from_log(append.prev_position, append.last_position))
        else:
            released.extend(sorted(append.events))


@given(announced_log())
def test_every_position_is_released_once_in_order_whatever_arrives(log):
    head, parts = log
    sequencer: Sequencer[int] = Sequencer(0)
    released: list[int] = []

    def read_from_log(after: int, up_to: int) -> list[int]:
        return list(range(after + 1, up_to + 1))

    for part in parts:
        sequencer.add(*part)
        drain(sequencer, released, read_from_log)
    sequencer.observe_head(head)  # the head poll
    while (up_to := sequencer.hole()) is not None:
        released.extend(read_from_log(sequencer.head, up_to))
        sequencer.reset(up_to)
        drain(sequencer, released, read_from_log)
    assert released == list(range(1, head + 1))
    assert sequencer.head == head
    for part in parts:  # late or repeated announcements change nothing
        sequencer.add(*part)
    assert sequencer.ready() == [] and sequencer.hole() is None


def test_parts_of_one_append_are_released_together_once_complete():
    sequencer: Sequencer[str] = Sequencer(10)
    sequencer.add(10, 13, ["b"])
    assert sequencer.ready() == [] and sequencer.hole() == 13
    sequencer.add(10, 13, ["a", "c"])
    [append] = sequencer.ready()
    assert (append.prev_position, append.last_position, sorted(append.events)) == (10, 13, ["a", "b", "c"])
    assert sequencer.head == 13 and sequencer.hole() is None


def test_an_append_after_a_missing_one_waits_and_the_hole_ends_where_it_starts():
    sequencer: Sequencer[str] = Sequencer(0)
    sequencer.add(5, 7, ["f", "g"])
    assert sequencer.ready() == []
    assert sequencer.hole() == 5  # read 1..5 from the log, then the announced 6..7 follow
    sequencer.reset(5)
    [append] = sequencer.ready()
    assert append.events == ["f", "g"]


def test_omitted_events_make_the_append_a_read_from_the_log():
    sequencer: Sequencer[str] = Sequencer(0)
    sequencer.add(0, 3, ["a"], omitted=2)
    [append] = sequencer.ready()
    assert append.events is None and (append.prev_position, append.last_position) == (0, 3)


def test_the_polled_head_reveals_a_lost_last_announcement():
    sequencer: Sequencer[str] = Sequencer(4)
    assert sequencer.hole() is None
    sequencer.observe_head(9)
    assert sequencer.hole() == 9


def test_a_release_that_could_not_be_handed_out_becomes_a_hole_again():
    sequencer: Sequencer[str] = Sequencer(0)
    sequencer.add(0, 2, ["a", "b"])
    sequencer.add(2, 3, ["c"])
    assert len(sequencer.ready()) == 2 and sequencer.head == 3
    sequencer.reset(0)  # the caller failed before handing them out
    assert sequencer.hole() == 3


def test_too_many_waiting_events_are_dropped_but_their_positions_stay_known():
    sequencer: Sequencer[str] = Sequencer(0, max_pending_events=3)
    sequencer.add(5, 7, ["f", "g"])
    sequencer.add(7, 9, ["h", "i"])  # over the cap: dropped, to be read from the log
    assert sequencer.ready() == [] and sequencer.hole() == 9


def test_positions_claimed_beyond_the_log_head_are_forgotten():
    sequencer: Sequencer[str] = Sequencer(10)
    sequencer.add(5_000_000, 5_000_001, ["forged"])
    assert sequencer.hole() == 5_000_000
    sequencer.forget_beyond(10)
    assert sequencer.hole() is None and sequencer.ready() == []


def test_announcements_carrying_no_event_count_against_the_bound():
    """A flood of parts announcing only omitted events (forged: no real part looks like this at these positions)
    took room without counting, so nothing bounded them while the database was away."""
    sequencer: Sequencer[str] = Sequencer(0, max_pending_events=1_000)
    for i in range(50_000):
        sequencer.add(10**12 - i, 10**12 - i + 1, [], omitted=1)
    assert sequencer.waiting <= 1_000
    assert sequencer.hole() is not None  # what was heard of stays a hole, read from the log


def test_a_replaced_part_gives_back_the_room_it_took():
    """A part replaced by one with another end still counted: the same append announced with two ends, over and
    over, filled the bound and dropped every other waiting append."""
    sequencer: Sequencer[str] = Sequencer(0, max_pending_events=6)
    sequencer.add(2, 3, ["e"])
    for _ in range(10):
        sequencer.add(0, 3, ["a", "b"])
        sequencer.add(0, 2, ["c"])
    sequencer.add(0, 2, ["d"])
    assert sequencer.ready() == [Append(0, 2, ["c", "d"]), Append(2, 3, ["e"])]


def test_a_hole_is_due_after_its_grace_however_often_its_end_moves():
    """The replica's feed waited for a hole's end to stay the same for the grace period: announcements of ever new
    positions (a flood of forged ones, each nearer the head) postponed reading a committed, unannounced append for
    as long as they came."""
    holes = HoleTimer(0.25)
    assert not holes.due(5, 10**12, now=100.0)
    for step in range(1, 100):  # a new end on every pass, well within the grace period
        assert not holes.due(5, 10**12 - step, now=100.0 + step * 0.002)
    assert holes.due(5, 10**12 - 100, now=100.3)


def test_a_hole_after_a_new_head_gets_its_own_grace_and_no_hole_resets_it():
    holes = HoleTimer(0.25)
    assert not holes.due(5, 9, now=0.0)
    assert not holes.due(7, 9, now=0.3)  # the head moved: the rest of the hole is new
    assert holes.due(7, 9, now=0.6)
    assert not holes.due(9, None, now=0.7)
    assert not holes.due(9, 12, now=0.8)
    holes.restart()
    assert not holes.due(9, 12, now=1.1)
    assert holes.due(9, 12, now=1.4)


def test_announcements_waiting_are_bounded_in_bytes_too():
    """Bounded only by events, 100,000 waiting announced events of 256 KiB (the database away, announcements
    still arriving; or forged ones) were 25 GiB held by the replica."""
    sequencer: Sequencer[str] = Sequencer(0, max_pending_bytes=1_000_000)
    for i in range(100):
        sequencer.add(10 + 2 * i, 11 + 2 * i, ["large"], size=300_000)
        assert sequencer.waiting <= 3
    assert sequencer.hole() == 209  # what was dropped stays known, and is read from the log
