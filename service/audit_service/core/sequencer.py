"""Puts announced appends back into commit order and finds what was missed. Pure: no I/O, no clock.

Ingest workers announce each committed append in parts (one tenant's events each; see
proto/audit/v1/committed.proto). Parts of different appends arrive in any order (two workers publish on two
connections) and some never arrive (core NATS is at most once). The sequencer releases whole appends strictly
in position order from `head`, and names the hole in front of it, which the caller reads from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

E = TypeVar("E")


@dataclass(slots=True)
class _Assembling(Generic[E]):
    last_position: int
    events: list[E] = field(default_factory=list)
    omitted: int = 0
    size: int = 0
    """Bytes of its parts as announced."""


def _held(part: _Assembling[E]) -> int:
    """What a waiting append counts against max_pending_events: its events, and its own entry."""
    return len(part.events) + 1


@dataclass(frozen=True, slots=True)
class Append(Generic[E]):
    """A whole append, next in position order."""

    prev_position: int
    last_position: int
    events: Sequence[E] | None
    """Its events (in any order), or None when some were too large to announce: read them from the log."""


class Sequencer(Generic[E]):
    """Releases announced appends in position order after `head`, each exactly once.

    Args:
        head: the last position already released (the log's head when the caller started listening).
        max_pending_events: what may wait at most, counted as its events plus one for each append heard of (an
            announcement carrying no event, only omitted ones, still takes room).
        max_pending_bytes: the bytes of announced parts that may wait at most (as `add` is told their sizes).
    """

    def __init__(self, head: int, *, max_pending_events: int = 100_000, max_pending_bytes: int | None = None) -> None:
        self.head = head
        self._known_head = head
        self._pending: dict[int, _Assembling[E]] = {}
        self._pending_events = 0
        self._pending_bytes = 0
        self._max_pending_events = max_pending_events
        self._max_pending_bytes = max_pending_bytes

    @property
    def waiting(self) -> int:
        """Appends heard of and not released yet (each held until it is whole, released, or dropped)."""
        return len(self._pending)

    @property
    def known_head(self) -> int:
        """The highest committed position heard of (announced, or observed in the log)."""
        return self._known_head

    def add(
        self, prev_position: int, last_position: int, events: Sequence[E], omitted: int = 0, *, size: int = 0
    ) -> None:
        """Takes one announced part (of `size` bytes). Parts of appends already released (or filled) are ignored.
        Beyond `max_pending_events` or `max_pending_bytes` waiting, all are dropped but the highest position,
        which stays known as a hole."""
        if prev_position < self.head or last_position <= prev_position:
            return
        assembling = self._pending.get(prev_position)
        if assembling is None or assembling.last_position != last_position:
            if assembling is not None:  # replaced: what it held no longer waits
                self._pending_events -= _held(assembling)
                self._pending_bytes -= assembling.size
            assembling = self._pending[prev_position] = _Assembling(last_position)
            self._pending_events += 1
        assembling.events.extend(events)
        assembling.omitted += omitted
        assembling.size += size
        self._pending_events += len(events)
        self._pending_bytes += size
        self._known_head = max(self._known_head, last_position)
        if self._pending_events > self._max_pending_events or (
            self._max_pending_bytes is not None and self._pending_bytes > self._max_pending_bytes
        ):
            # The caller is not keeping up (its database is away): keep only the head, read the rest from the log.
            self._pending.clear()
            self._pending_events = self._pending_bytes = 0

    def _recount(self) -> None:
        self._pending_events = sum(map(_held, self._pending.values()))
        self._pending_bytes = sum(part.size for part in self._pending.values())

    def observe_head(self, position: int) -> None:
        """Records the log's head read from the database (it shows appends whose announcements were lost)."""
        self._known_head = max(self._known_head, position)

    def ready(self) -> list[Append[E]]:
        """The whole appends that continue from `head`, in order; `head` moves past them."""
        released: list[Append[E]] = []
        while (assembling := self._pending.get(self.head)) is not None:
            size = assembling.last_position - self.head
            received = len(assembling.events) + assembling.omitted
            if received < size:
                break
            del self._pending[self.head]
            self._pending_events -= _held(assembling)
            self._pending_bytes -= assembling.size
            events = assembling.events if assembling.omitted == 0 and received == size else None
            released.append(Append(self.head, assembling.last_position, events))
            self.head = assembling.last_position
        return released

    def hole(self) -> int | None:
        """The end of the positions after `head` known to be committed but not (wholly) announced yet: read
        (head, hole()] from the log once it has stayed open long enough. None when there is no hole."""
        if self._known_head <= self.head:
            return None
        assembling = self._pending.get(self.head)
        if assembling is not None:
            return assembling.last_position
        later = [prev for prev in self._pending if prev > self.head]
        return min(later) if later else self._known_head

    def reset(self, head: int) -> None:
        """Continues after `head`: forward after the caller read up to it from the log, or back when what was
        released could not be handed out (then it is a hole again). Parts before `head` are dropped."""
        self.head = head
        self._known_head = max(self._known_head, head)
        for prev in [prev for prev in self._pending if prev < head]:
            del self._pending[prev]
        self._recount()

    def forget_beyond(self, position: int) -> None:
        """Drops what was heard of positions after `position` (the log's head): no append ends beyond it."""
        for prev in [prev for prev, part in self._pending.items() if part.last_position > position]:
            del self._pending[prev]
        self._recount()
        self._known_head = max(self.head, min(self._known_head, position))


class HoleTimer:
    """Says when a hole has stayed open long enough to be read from the log.

    Its grace period runs from when a hole after `head` was first seen, however the hole's end moves meanwhile:
    announcements of later positions move the end (and a flood of forged ones would move it on every pass), and
    must not postpone reading positions that are committed but were never announced.

    Args:
        grace_seconds: how long a hole may stay open (announcements of consecutive appends can arrive out of order).
    """

    def __init__(self, grace_seconds: float) -> None:
        self._grace = grace_seconds
        self._head: int | None = None
        self._since = 0.0

    def due(self, head: int, hole_end: int | None, now: float) -> bool:
        """True when the hole after `head` (ending at `hole_end`, None: no hole) has been open for the grace period
        at `now` (seconds, any monotonic clock)."""
        if hole_end is None:
            self._head = None
            return False
        if self._head != head:
            self._head, self._since = head, now
            return False
        return now - self._since >= self._grace

    def restart(self) -> None:
        """Forgets the hole: the next one seen starts a new grace period (after an attempt to read it)."""
        self._head = None
