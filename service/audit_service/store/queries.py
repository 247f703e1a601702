"""Reads of the log: keyset pages, single events, exact counts and histograms (from the log or the projection)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from ..core.counts import (
    Bucket,
    CountSource,
    action_projection_can_answer,
    count_action_rows,
    group_totals,
    histogram,
    needs_actions,
    projection_can_answer,
    projection_tenants,
    row_hours,
)
from ..core.filters import Expr
from ..core.records import columns_sql, datetime_to_micros
from .filter_sql import FilterSql, Parameters, timestamp_sql
from .pool import acquire
from .sized_reads import SizedRows, byte_bounded, read_bytes_sql, sized_rows

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
    max_bytes: int
    """The page ends once its events cost this many bytes to read (read_bytes): at least one event is returned."""
    up_to_position: int | None = None
    """When set, only positions up to this one (a tail's catch-up reads a bounded window)."""


def page_sql(query: PageQuery) -> tuple[str, list[object]]:
    """The statement of one page, and its parameters."""
    params = Parameters()
    conditions = [FilterSql(params, "e").condition(query.where)]
    if query.after_position is not None:
        conditions.append(f"e.position {'<' if query.newest_first else '>'} {params.add(query.after_position)}")
    if query.up_to_position is not None:
        conditions.append(f"e.position <= {params.add(query.up_to_position)}")
    direction = "DESC" if query.newest_first else "ASC"
    page = (
        f"SELECT {_COLUMNS}, {read_bytes_sql('e')} AS read_bytes "
        f"FROM audit_events e WHERE {' AND '.join(f'({c})' for c in conditions)} "
        f"ORDER BY e.position {direction} LIMIT {params.add(query.limit)}"
    )
    sql = byte_bounded(page, descending=query.newest_first, max_bytes_parameter=params.add(query.max_bytes))
    return sql, params.values


async def list_events(pool: asyncpg.Pool, query: PageQuery) -> SizedRows:
    """One page of matching events, in position order (descending when newest_first), cut at max_bytes."""
    sql, args = page_sql(query)
    async with acquire(pool) as conn:
        return sized_rows(await conn.fetch(sql, *args))


async def log_head(pool: asyncpg.Pool) -> int:
    """The last committed position of the log (0 when empty)."""
    async with acquire(pool) as conn:
        return await conn.fetchval("SELECT last_position FROM audit_log_head")


_READ_RANGE = byte_bounded(
    f"SELECT {_COLUMNS}, {read_bytes_sql('e')} AS read_bytes FROM audit_events e "
    "WHERE e.position > $1 AND e.position <= $2 ORDER BY e.position LIMIT $3",
    descending=False,
    max_bytes_parameter="$4",
)


async def read_range(
    pool: asyncpg.Pool, after_position: int, up_to_position: int, limit: int, max_bytes: int
) -> SizedRows:
    """Every stored event (any tenant) in (after_position, up_to_position], in position order, at most `limit`
    and cut at `max_bytes`."""
    async with acquire(pool) as conn:
        return sized_rows(await conn.fetch(_READ_RANGE, after_position, up_to_position, limit, max_bytes))


async def stored_hashes(pool: asyncpg.Pool, after_position: int, up_to_position: int) -> dict[int, bytes]:
    """The chain hash of every stored event in (after_position, up_to_position], by position."""
    async with acquire(pool) as conn:
        rows = await conn.fetch(
            "SELECT position, hash FROM audit_events WHERE position > $1 AND position <= $2",
            after_position,
            up_to_position,
        )
    return {row[0]: bytes(row[1]) for row in rows}


async def matching_positions(pool: asyncpg.Pool, positions: list[int], where: Expr) -> set[int]:
    """Which of `positions` hold an event matching `where`."""
    params = Parameters()
    params.add(positions)
    condition = FilterSql(params, "e").condition(where)
    async with acquire(pool) as conn:
        rows = await conn.fetch(
            f"SELECT e.position FROM audit_events e WHERE e.position = ANY($1::bigint[]) AND ({condition})",
            *params.values,
        )
    return {row[0] for row in rows}


_FIRST_AT_OR_AFTER = "SELECT position, recorded_at FROM audit_events WHERE position >= $1 ORDER BY position LIMIT 1"


async def last_position_before(pool: asyncpg.Pool, moment: dt.datetime) -> int:
    """The last position recorded (committed) before `moment`, 0 if none: a tail from `moment` starts after it.

    recorded_at never decreases with position (append.py), so this is a binary search over positions with
    primary-key probes: about 25 for 10M events, and no index on recorded_at to maintain on every append.
    """
    async with acquire(pool) as conn:
        low, high = 0, await conn.fetchval("SELECT last_position FROM audit_log_head")
        while low < high:  # the answer is in [low, high]
            middle = (low + high + 1) // 2
            row = await conn.fetchrow(_FIRST_AT_OR_AFTER, middle)
            if row is None or row["recorded_at"] >= moment:
                high = middle - 1
            else:
                low = min(row["position"], high)
        return low


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
    source: CountSource


ALL_SOURCES = (CountSource.ACTION_PROJECTION, CountSource.PROJECTION, CountSource.LOG)


def count_source(query: CountQuery, allowed: tuple[CountSource, ...] = ALL_SOURCES) -> CountSource:
    """The first of `allowed` that counts exactly what the log would (the log always can)."""
    interval = query.histogram[2] if query.histogram else None
    for source in allowed:
        if source is CountSource.ACTION_PROJECTION and action_projection_can_answer(
            query.where, query.group_by, interval
        ):
            return source
        if source is CountSource.PROJECTION and projection_can_answer(query.where, query.group_by, interval):
            return source
    return CountSource.LOG


def action_rows_sql(query: CountQuery) -> tuple[str, list[object]]:
    """The statement reading the per-action projection rows a count needs (the rest is core.counts)."""
    tenants = projection_tenants(query.where)
    start, end = row_hours(query.where, query.histogram)
    params = Parameters()
    conditions = [f"tenant = ANY({params.add(list(tenants or ()))}::text[])"]
    if start is not None:
        conditions.append(f"hour >= {timestamp_sql(params, start)}")
    if end is not None:
        conditions.append(f"hour < {timestamp_sql(params, end)}")
    per_action = "actions, counts" if needs_actions(query.where, query.group_by is not None) else "NULL, NULL"
    sql = f"SELECT tenant, hour, events, {per_action} FROM audit_action_counts_hourly WHERE {' AND '.join(conditions)}"
    return sql, params.values


def count_sql(query: CountQuery, source: CountSource) -> tuple[str, list[object]]:
    """The statement of a count from the log or from audit_counts_hourly, and its parameters."""
    params = Parameters()
    if source is CountSource.PROJECTION:
        table, alias, time_column, count = "audit_counts_hourly", "p", "hour", "sum(p.events)"
        group_sql = _PROJECTION_GROUP_SQL
    elif source is CountSource.LOG:
        table, alias, time_column, count = "audit_events", "e", "occurred_at", "count(*)"
        group_sql = _LOG_GROUP_SQL
    else:
        raise ValueError(f"count_sql does not read {source}; see action_rows_sql")
    condition = FilterSql(params, alias, time_column).condition(query.where)
    key = f"coalesce({group_sql[query.group_by]}, '')" if query.group_by else "''"
    if not query.histogram:
        sql = f"SELECT {key} AS key, {count}::bigint AS n FROM {table} {alias} WHERE {condition} GROUP BY 1"
        return sql, params.values
    start, _, interval = query.histogram
    # One row per non-empty bucket, with its groups ranked largest first, then by key in code-point order (as
    # Python and the per-action projection rank them, whatever the database's collation): far fewer rows to
    # decode than one per (bucket, group).
    bucket = (
        f"date_bin({params.add(dt.timedelta(microseconds=interval))}::interval, {alias}.{time_column}, "
        f"{timestamp_sql(params, start)})"
    )
    # Each bucket's start is read back as µs (extract gives an exact numeric): asyncpg would read the first
    # bucket of a range from 0001-01-01 as a naive datetime.min, its value for -infinity.
    sql = (
        "SELECT (extract(epoch FROM bucket) * 1000000)::bigint AS bucket, "
        'array_agg(key ORDER BY n DESC, key COLLATE "C") AS keys, '
        'array_agg(n ORDER BY n DESC, key COLLATE "C") AS counts '
        f"FROM (SELECT {bucket} AS bucket, {key} AS key, {count}::bigint AS n FROM {table} {alias} "
        f"WHERE {condition} GROUP BY 1, 2) AS grouped GROUP BY grouped.bucket"
    )
    return sql, params.values


async def count_events(
    pool: asyncpg.Pool, query: CountQuery, *, allowed: tuple[CountSource, ...] = ALL_SOURCES
) -> CountResult:
    """Exact counts of the events matching `query.where`, with buckets and groups as asked, from the most
    compact of the `allowed` sources that can answer exactly."""
    source = count_source(query, allowed)
    if source is CountSource.ACTION_PROJECTION:
        sql, args = action_rows_sql(query)
        async with acquire(pool) as conn:
            rows = await conn.fetch(sql, *args)
        total, buckets, groups = count_action_rows(
            ((row[0], datetime_to_micros(row[1]), row[2], row[3], row[4]) for row in rows),
            query.where,
            histogram_range=query.histogram,
            grouped=query.group_by is not None,
        )
        return CountResult(total, buckets, groups, source)
    sql, args = count_sql(query, source)
    async with acquire(pool) as conn:
        rows = await conn.fetch(sql, *args)
    if not query.histogram:
        groups = group_totals((row["key"], row["n"]) for row in rows) if query.group_by else ()
        return CountResult(sum(row["n"] for row in rows), [], groups, source)
    start, end, interval = query.histogram
    buckets = histogram(
        (((row["bucket"] - start) // interval, row["keys"], row["counts"]) for row in rows),
        start=start,
        end=end,
        interval=interval,
        grouped=query.group_by is not None,
    )
    groups = ()
    if query.group_by:
        groups = group_totals(pair for row in rows for pair in zip(row["keys"], row["counts"], strict=True))
    return CountResult(total=sum(bucket.count for bucket in buckets), buckets=buckets, groups=groups, source=source)
