"""Reads of the log: keyset pages, single events, exact counts and histograms (from the log or the projection)."""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass

import asyncpg

from ..core.counts import Bucket, group_totals, histogram, projection_can_answer
from ..core.filters import Expr
from ..core.records import columns_sql, datetime_to_micros, micros_to_datetime
from .filter_sql import FilterSql, Parameters
from .pool import acquire

_COLUMNS = columns_sql("e.")

GROUP_COLUMNS = ("actor", "action", "resource_type", "outcome")
"""What counts can be grouped by."""
_LOG_GROUP_SQL = {
    "actor": "coalesce(e.actor_id, e.actor_slug)",
    "action": "e.action",
    "resource_type": "e.resource_type",
    "outcome": "e.outcome::text",
}
_PROJECTION_GROUP_SQL = {"action": "p.action", "resource_type": "p.resource_type", "outcome": "p.outcome::text"}


@dataclass(frozen=True, slots=True)
class PageQuery:
    where: Expr
    newest_first: bool
    after_position: int | None
    """Keyset cursor: strictly beyond this position in the listing order; None for the first page."""
    limit: int


def page_sql(query: PageQuery) -> tuple[str, list[object]]:
    """The statement of one page, and its parameters."""
    params = Parameters()
    conditions = [FilterSql(params, "e").condition(query.where)]
    if query.after_position is not None:
        conditions.append(f"e.position {'<' if query.newest_first else '>'} {params.add(query.after_position)}")
    direction = "DESC" if query.newest_first else "ASC"
    sql = (
        f"SELECT {_COLUMNS} FROM audit_events e WHERE {' AND '.join(f'({c})' for c in conditions)} "
        f"ORDER BY e.position {direction} LIMIT {params.add(query.limit)}"
    )
    return sql, params.values


async def list_events(pool: asyncpg.Pool, query: PageQuery) -> list[asyncpg.Record]:
    """One page of matching events, in position order (descending when newest_first)."""
    sql, args = page_sql(query)
    async with acquire(pool) as conn:
        return await conn.fetch(sql, *args)


async def get_event(pool: asyncpg.Pool, event_id: str, where: Expr) -> asyncpg.Record | None:
    """The stored event with this id if it matches `where` (the caller's scope), else None."""
    params = Parameters()
    params.add(event_id)
    condition = FilterSql(params, "e").condition(where)
    async with acquire(pool) as conn:
        return await conn.fetchrow(
            f"""
            SELECT {_COLUMNS}
            FROM audit_event_ids i
            JOIN audit_events e ON e.position = i.position AND e.recorded_at = i.recorded_at
            WHERE i.event_id = $1::uuid AND ({condition})
            """,
            *params.values,
        )


@dataclass(frozen=True, slots=True)
class CountQuery:
    where: Expr
    group_by: str | None = None
    """One of GROUP_COLUMNS, or None."""
    histogram: tuple[int, int, int] | None = None
    """(start, end, interval) in µs for a histogram over [start, end), or None for totals only."""


@dataclass(frozen=True, slots=True)
class CountResult:
    total: int
    buckets: list[Bucket]
    groups: tuple[tuple[str, int], ...]
    from_projection: bool


def count_sql(query: CountQuery, *, use_projection: bool = True) -> tuple[str, list[object], bool]:
    """The statement of a count, its parameters, and whether it reads the projection (when it can answer
    exactly what the log would, see core.counts.projection_can_answer)."""
    interval = query.histogram[2] if query.histogram else None
    from_projection = use_projection and projection_can_answer(query.where, query.group_by, interval)
    params = Parameters()
    if from_projection:
        table, alias, time_column, count = "audit_counts_hourly", "p", "hour", "sum(p.events)"
        group_sql = _PROJECTION_GROUP_SQL
    else:
        table, alias, time_column, count = "audit_events", "e", "occurred_at", "count(*)"
        group_sql = _LOG_GROUP_SQL
    condition = FilterSql(params, alias, time_column).condition(query.where)
    key = f"coalesce({group_sql[query.group_by]}, '')" if query.group_by else "''"
    if not query.histogram:
        sql = f"SELECT {key} AS key, {count}::bigint AS n FROM {table} {alias} WHERE {condition} GROUP BY 1"
        return sql, params.values, from_projection
    start, _, interval = query.histogram
    # One row per non-empty bucket, with its groups ranked largest first: far fewer rows to decode than one
    # per (bucket, group).
    bucket = (
        f"date_bin({params.add(dt.timedelta(microseconds=interval))}::interval, {alias}.{time_column}, "
        f"{params.add(micros_to_datetime(start))}::timestamptz)"
    )
    sql = (
        "SELECT bucket, array_agg(key ORDER BY n DESC, key) AS keys, array_agg(n ORDER BY n DESC, key) AS counts "
        f"FROM (SELECT {bucket} AS bucket, {key} AS key, {count}::bigint AS n FROM {table} {alias} "
        f"WHERE {condition} GROUP BY 1, 2) AS grouped GROUP BY bucket"
    )
    return sql, params.values, from_projection


async def count_events(pool: asyncpg.Pool, query: CountQuery, *, use_projection: bool = True) -> CountResult:
    """Exact counts of the events matching `query.where`, with buckets and groups as asked."""
    sql, args, from_projection = count_sql(query, use_projection=use_projection)
    async with acquire(pool) as conn:
        rows = await conn.fetch(sql, *args)
    if not query.histogram:
        groups = group_totals((row["key"], row["n"]) for row in rows) if query.group_by else ()
        return CountResult(sum(row["n"] for row in rows), [], groups, from_projection)
    start, end, interval = query.histogram
    buckets = histogram(
        (((datetime_to_micros(row["bucket"]) - start) // interval, row["keys"], row["counts"]) for row in rows),
        start=start,
        end=end,
        interval=interval,
        grouped=query.group_by is not None,
    )
    totals: collections.Counter[str] = collections.Counter()
    if query.group_by:
        for row in rows:
            totals.update(dict(zip(row["keys"], row["counts"], strict=True)))
    return CountResult(
        total=sum(bucket.count for bucket in buckets),
        buckets=buckets,
        groups=group_totals(totals.items()),
        from_projection=from_projection,
    )
