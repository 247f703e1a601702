"""Counting, pure: what a batch adds to the count projections, which source can answer a count, and the
counts and histogram buckets themselves.

Two projections count events per UTC hour of occurred_at:
- audit_counts_hourly, per (tenant, hour, action, resource type, outcome, actor type);
- audit_action_counts_hourly, one row per (tenant, hour) holding the events of each action: far fewer rows
  for the most common count, a tenant's activity over time, possibly by action.
A count is answered from the most compact one that gives exactly what the log would (the filter reads only
its columns and every time bound falls on a whole hour), otherwise from the log.
"""

from __future__ import annotations

import collections
import enum
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .filters import And, AnyOf, Expr, Not, OccurredBetween, Or, columns_of, time_ranges_of
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


class CountSource(enum.Enum):
    ACTION_PROJECTION = "audit_action_counts_hourly"
    PROJECTION = "audit_counts_hourly"
    LOG = "audit_events"


def _hour_aligned(expr: Expr, interval_micros: int | None) -> bool:
    if interval_micros is not None and interval_micros % HOUR_MICROS:
        return False
    return all(
        bound is None or bound % HOUR_MICROS == 0
        for time_range in time_ranges_of(expr)
        for bound in (time_range.start, time_range.end)
    )


def projection_can_answer(expr: Expr, group_column: str | None, interval_micros: int | None) -> bool:
    """Whether audit_counts_hourly gives the exact count the log would for this filter, grouping and interval."""
    return (
        columns_of(expr) <= PROJECTION_COLUMNS | {"occurred_at"}
        and (group_column is None or group_column in PROJECTION_GROUPS)
        and _hour_aligned(expr, interval_micros)
    )


def _top_level(expr: Expr) -> tuple[Expr, ...]:
    return expr.children if isinstance(expr, And) else (expr,)


def _tenant_part(expr: Expr) -> AnyOf | None:
    for part in _top_level(expr):
        if isinstance(part, AnyOf) and part.column == "tenant" and not part.prefixes:
            return part
    return None


def projection_tenants(expr: Expr) -> tuple[str, ...] | None:
    """The tenants a filter is limited to by a top-level tenant condition (the projections' leading key), or
    None when it is not."""
    part = _tenant_part(expr)
    return None if part is None else tuple(str(value) for value in part.values)


def action_projection_can_answer(expr: Expr, group_column: str | None, interval_micros: int | None) -> bool:
    """Whether audit_action_counts_hourly gives the exact count the log would: the filter reads only the
    tenant (limited at the top level), the action and time, with whole-hour time bounds at the top level;
    grouping by action or none."""
    top_level_ranges = sum(isinstance(part, OccurredBetween) for part in _top_level(expr))
    return (
        columns_of(expr) <= {"tenant", "action", "occurred_at"}
        and group_column in (None, "action")
        and projection_tenants(expr) is not None
        and len(time_ranges_of(expr)) == top_level_ranges
        and _hour_aligned(expr, interval_micros)
    )


def row_hours(expr: Expr, histogram_range: tuple[int, int, int] | None) -> tuple[int | None, int | None]:
    """[start, end) in µs of the per-action projection rows a count reads (None: unbounded): the filter's
    top-level time bounds, within the histogram's range when there is one."""
    ranges = [part for part in _top_level(expr) if isinstance(part, OccurredBetween)]
    if histogram_range is not None:
        ranges.append(OccurredBetween(histogram_range[0], histogram_range[1]))
    starts = [bound.start for bound in ranges if bound.start is not None]
    ends = [bound.end for bound in ranges if bound.end is not None]
    return (max(starts) if starts else None), (min(ends) if ends else None)


def _matches(expr: Expr, tenant: str, action: str) -> bool:
    """Whether events of `tenant` with `action` match a filter of those two columns (neither is ever NULL)."""
    if isinstance(expr, AnyOf):
        value = tenant if expr.column == "tenant" else action
        return value in expr.values or any(value.startswith(prefix) for prefix in expr.prefixes)
    if isinstance(expr, Not):
        return not _matches(expr.child, tenant, action)
    if isinstance(expr, And):
        return all(_matches(child, tenant, action) for child in expr.children)
    if isinstance(expr, Or):
        return any(_matches(child, tenant, action) for child in expr.children)
    raise ValueError(f"not a filter of tenant and action: {expr!r}")


@dataclass(frozen=True, slots=True)
class Bucket:
    start: int
    """µs since the epoch."""
    count: int
    keys: Sequence[str] = ()
    """Group keys, largest count first, then by key (empty when not grouped)."""
    counts: Sequence[int] = ()
    """counts[i] events of keys[i]. (Two sequences, not pairs: a month of hourly buckets by action holds ~10^4
    groups, served as they come from the database.)"""

    @property
    def groups(self) -> tuple[tuple[str, int], ...]:
        return tuple(zip(self.keys, self.counts, strict=True))


def _ranked(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """(key, count) of the non-zero counts, largest first, then by key."""
    by_key = sorted((key, count) for key, count in counts.items() if count)
    return tuple(sorted(by_key, key=operator.itemgetter(1), reverse=True))  # stable: equal counts stay by key


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
        buckets.append(Bucket(at, sum(counts), keys, counts) if grouped else Bucket(at, sum(counts)))
    return buckets


def needs_actions(expr: Expr, grouped: bool) -> bool:
    """Whether counting from the per-action projection needs each row's events per action, or only its
    total: when grouping by action or when the filter reads the action."""
    return grouped or "action" in columns_of(expr)


def count_action_rows(
    rows: Iterable[tuple[str, int, int, Sequence[str] | None, Sequence[int] | None]],
    expr: Expr,
    *,
    histogram_range: tuple[int, int, int] | None,
    grouped: bool,
) -> tuple[int, list[Bucket], tuple[tuple[str, int], ...]]:
    """Total, buckets and groups by action of the events matching `expr` (one the per-action projection can
    answer), from the rows of the tenants of `projection_tenants(expr)`: (tenant, hour in µs, events, actions,
    counts), actions and counts ranked as a bucket lists them, or None when not `needs_actions`.

    Args:
        histogram_range: (start, end, interval) in µs for buckets over [start, end), or None for none.
        grouped: whether to count per action (in each bucket and overall).
    """
    start, end = row_hours(expr, histogram_range)
    # What remains to check per action: the rows are those of the top-level tenant condition, in the hours of
    # the top-level time bounds.
    row_level = _tenant_part(expr)
    row_tenants = set(row_level.values) if row_level is not None else set()

    def holds_for_whole_rows(part: Expr) -> bool:  # e.g. the caller's tenant and the filter's, both given
        if isinstance(part, OccurredBetween):
            return True
        return isinstance(part, AnyOf) and part.column == "tenant" and row_tenants <= set(part.values)

    action_filter = And(tuple(part for part in _top_level(expr) if not holds_for_whole_rows(part)))
    verdicts: dict[str, dict[str, bool]] = {}
    events_per_bucket: dict[int, int] = {}
    ranked_per_bucket: dict[int, list[tuple[Sequence[str], Sequence[int]]]] = {}
    for tenant, hour, events, actions, counts in rows:
        if (start is not None and hour < start) or (end is not None and hour >= end):
            continue
        index = (hour - histogram_range[0]) // histogram_range[2] if histogram_range else 0
        if actions is None or counts is None:
            events_per_bucket[index] = events_per_bucket.get(index, 0) + events
            continue
        if action_filter.children:
            allowed = verdicts.setdefault(tenant, {})
            for action in actions:
                if action not in allowed:
                    allowed[action] = _matches(action_filter, tenant, action)
            kept = [i for i, action in enumerate(actions) if allowed[action]]
            if len(kept) < len(actions):  # filtering keeps the ranking
                actions, counts = [actions[i] for i in kept], [counts[i] for i in kept]
                events = sum(counts)
        events_per_bucket[index] = events_per_bucket.get(index, 0) + events
        if grouped:
            ranked_per_bucket.setdefault(index, []).append((actions, counts))

    def merged(parts: list[tuple[Sequence[str], Sequence[int]]]) -> tuple[Sequence[str], Sequence[int]]:
        if len(parts) == 1:  # one hour: ranked as stored
            return parts[0]
        ranked = group_totals(pair for actions, counts in parts for pair in zip(actions, counts, strict=True))
        return [key for key, _ in ranked], [count for _, count in ranked]

    total = sum(events_per_bucket.values())
    groups: tuple[tuple[str, int], ...] = ()
    if grouped:
        groups = tuple(zip(*merged([part for parts in ranked_per_bucket.values() for part in parts]), strict=True))
    if histogram_range is None:
        return total, [], groups
    buckets = []
    for index, at in enumerate(bucket_starts(*histogram_range)):
        parts = ranked_per_bucket.get(index)
        buckets.append(
            Bucket(at, events_per_bucket.get(index, 0), *merged(parts))
            if parts
            else Bucket(at, events_per_bucket.get(index, 0))
        )
    return total, buckets, groups


def group_totals(rows: Iterable[tuple[str | None, int]]) -> tuple[tuple[str, int], ...]:
    """(key, count) per group (None is ""), summed over the rows, largest first, then by key."""
    counts: dict[str, int] = {}
    for key, count in rows:
        counts[key or ""] = counts.get(key or "", 0) + count
    return _ranked(counts)
