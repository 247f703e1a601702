"""Reads of the log: keyset pages, single events, counts."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..core.records import columns_sql
from .pool import acquire

_COLUMNS = columns_sql("e.")


@dataclass(frozen=True, slots=True)
class PageQuery:
    tenant: str
    """"" for every tenant."""
    newest_first: bool
    after_position: int | None
    """Keyset cursor: strictly beyond this position in the listing order; None for the first page."""
    limit: int


def _page_sql(query: PageQuery) -> tuple[str, list[object]]:
    conditions = []
    args: list[object] = []
    if query.tenant:
        args.append(query.tenant)
        conditions.append(f"e.tenant = ${len(args)}")
    if query.after_position is not None:
        args.append(query.after_position)
        conditions.append(f"e.position {'<' if query.newest_first else '>'} ${len(args)}")
    args.append(query.limit)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    direction = "DESC" if query.newest_first else "ASC"
    sql = f"SELECT {_COLUMNS} FROM audit_events e {where} ORDER BY e.position {direction} LIMIT ${len(args)}"
    return sql, args


async def list_events(pool: asyncpg.Pool, query: PageQuery) -> list[asyncpg.Record]:
    """One page of stored events, in position order (descending when newest_first)."""
    sql, args = _page_sql(query)
    async with acquire(pool) as conn:
        return await conn.fetch(sql, *args)


async def get_event(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record | None:
    """The stored event with this id, or None."""
    async with acquire(pool) as conn:
        return await conn.fetchrow(
            f"""
            SELECT {_COLUMNS}
            FROM audit_event_ids i
            JOIN audit_events e ON e.position = i.position AND e.recorded_at = i.recorded_at
            WHERE i.event_id = $1::uuid
            """,
            event_id,
        )


async def count_events(pool: asyncpg.Pool, tenant: str) -> int:
    """Exact number of stored events of a tenant ("" for all tenants)."""
    async with acquire(pool) as conn:
        if tenant:
            return await conn.fetchval("SELECT count(*) FROM audit_events WHERE tenant = $1", tenant)
        return await conn.fetchval("SELECT count(*) FROM audit_events")
