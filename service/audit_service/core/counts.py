"""Counting, pure: the hourly count projection's rows for a batch, and histogram buckets.

The projection counts events per (tenant, UTC hour of occurred_at, action, resource type, outcome, actor
type). A count can be answered from it when the filter reads only those columns and any time bound falls
on a whole hour; otherwise it is answered from the log.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .filters import Expr, columns_of, time_ranges_of
from .records import CONTENT_COLUMNS, Content

HOUR_MICROS = 3_600_000_000
PROJECTION_COLUMNS = frozenset({"tenant", "action", "resource_type", "outcome", "actor_type"})
"""Columns of audit_counts_hourly a filter may read (besides the hour)."""
PROJECTION_GROUPS = frozenset({"action", "resource_type", "outcome"})
"""Group-by columns the projection can answer."""
MAX_BUCKETS = 10_000

_TENANT = CONTENT_COLUMNS.index("tenant")
_ACTION = CONTENT_COLUMNS.index("action")
_RESOURCE_TYPE = CONTENT_COLUMNS.index("resource_type")
_OUTCOME = CONTENT_COLUMNS.index("outcome")
_ACTOR_TYPE = CONTENT_COLUMNS.index("actor_type")
_OCCURRED_AT = CONTENT_COLUMNS.index("occurred_at")

CountKey = tuple[str, int, str, str | None, int, int]
"""(tenant, hour in µs since the epoch, action, resource type or None, outcome, actor type)"""


def hour_of(micros: int) -> int:
    """The start of the UTC hour holding `micros`."""
    return micros - micros % HOUR_MICROS


def hourly_counts(contents: Iterable[Content]) -> dict[CountKey, int]:
    """What a batch of appended events adds to the projection."""
    counts: collections.Counter[CountKey] = collections.Counter()
    for content in contents:
        counts[
            (
                content[_TENANT],
                hour_of(content[_OCCURRED_AT]),
                content[_ACTION],
                content[_RESOURCE_TYPE] or None,
                content[_OUTCOME],
                content[_ACTOR_TYPE],
            )
        ] += 1
    return counts


def projection_can_answer(expr: Expr, group_column: str | None, interval_micros: int | None) -> bool:
    """Whether the projection gives the exact count the log would for this filter, grouping and interval."""
    if not columns_of(expr) <= PROJECTION_COLUMNS | {"occurred_at"}:
        return False
    if group_column is not None and group_column not in PROJECTION_GROUPS:
        return False
    if interval_micros is not None and interval_micros % HOUR_MICROS:
        return False
    for time_range in time_ranges_of(expr):
        for bound in (time_range.start, time_range.end):
            if bound is not None and bound % HOUR_MICROS:
                return False
    return True


@dataclass(frozen=True, slots=True)
class Bucket:
    start: int
    """µs since the epoch."""
    count: int
    groups: tuple[tuple[str, int], ...]
    """(key, count), largest first, then by key."""


def _ranked(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(((key, count) for key, count in counts.items() if count), key=lambda kv: (-kv[1], kv[0])))


def bucket_starts(start: int, end: int, interval: int) -> range:
    """Starts of the buckets covering [start, end)."""
    return range(start, end, interval)


def histogram(
    rows: Iterable[tuple[int, Sequence[str], Sequence[int]]], *, start: int, end: int, interval: int, grouped: bool
) -> list[Bucket]:
    """Every bucket of [start, end), empty ones included.

    Args:
        rows: (bucket index, group keys, counts) for the non-empty buckets, keys ranked largest count first.
    """
    found = {index: (keys, counts) for index, keys, counts in rows}
    buckets = []
    for index, at in enumerate(bucket_starts(start, end, interval)):
        keys, counts = found.get(index, ((), ()))
        buckets.append(Bucket(at, sum(counts), tuple(zip(keys, counts, strict=True)) if grouped else ()))
    return buckets


def group_totals(rows: Iterable[tuple[str | None, int]]) -> tuple[tuple[str, int], ...]:
    """(key, count) per group, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for key, count in rows:
        counts[key or ""] += count
    return _ranked(counts)
