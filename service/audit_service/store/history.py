"""Reads of one resource stream: its events in revision (position) order, a keyset page at a time."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..core.records import columns_sql
from .pool import acquire
from .sized_reads import SizedRows, byte_bounded, read_bytes_sql, sized_rows

_COLUMNS = columns_sql("e.")


@dataclass(frozen=True, slots=True)
class StreamPageQuery:
    tenant: str
    resource_type: str
    """"" for the stream of events that name no resource type."""
    resource_id: str
    actor_id: str | None
    """When set, only the events this actor performed."""
    newest_first: bool
    after_position: int | None
    """Keyset cursor: strictly beyond this position in the listing order; None for the first page."""
    limit: int
    max_bytes: int
    """The page ends once its events add up to this many bytes (at least one event is returned)."""


def stream_page_sql(query: StreamPageQuery) -> tuple[str, list[object]]:
    """The statement of one page of a stream (served by the index on tenant, resource_id, position)."""
    args: list[object] = [query.tenant, query.resource_id, query.resource_type]
    conditions = ["e.tenant = $1", "e.resource_id = $2", "coalesce(e.resource_type, '') = $3"]
    if query.actor_id is not None:
        args.append(query.actor_id)
        conditions.append(f"e.actor_id = ${len(args)}")
    if query.after_position is not None:
        args.append(query.after_position)
        conditions.append(f"e.position {'<' if query.newest_first else '>'} ${len(args)}")
    args.append(query.limit)
    page = (
        f"SELECT {_COLUMNS}, {read_bytes_sql('e')} AS read_bytes FROM audit_events e "
        f"WHERE {' AND '.join(conditions)} "
        f"ORDER BY e.position {'DESC' if query.newest_first else 'ASC'} LIMIT ${len(args)}"
    )
    args.append(query.max_bytes)
    return byte_bounded(page, descending=query.newest_first, max_bytes_parameter=f"${len(args)}"), args


async def stream_page(pool: asyncpg.Pool, query: StreamPageQuery) -> SizedRows:
    """One page of the stream's events, in position order (descending when newest_first), cut at max_bytes."""
    sql, args = stream_page_sql(query)
    async with acquire(pool) as conn:
        return sized_rows(await conn.fetch(sql, *args))
