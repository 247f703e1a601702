"""Rebuilding read models from the log: `audit-service rebuild-projections`.

The count projections are normally kept by the append transaction (store/append.py). A rebuild recomputes
them from audit_events alone, in position chunks, inside one transaction that holds the log head: appends
wait meanwhile, readers keep reading the old rows until COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from .append import ADD_TO_ACTION_COUNTS, RANKED_ACTION_COUNTS

_LOCK_HEAD = "SELECT last_position FROM audit_log_head FOR UPDATE"
_ADD_CHUNK = """
INSERT INTO audit_counts_hourly (tenant, hour, action, resource_type, outcome, actor_type, events)
SELECT tenant, date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00'), action, resource_type,
       outcome, actor_type, count(*)
FROM audit_events
WHERE position > $1 AND position <= $2
GROUP BY 1, 2, 3, 4, 5, 6
ON CONFLICT ON CONSTRAINT audit_counts_hourly_key DO UPDATE SET events = audit_counts_hourly.events + excluded.events
"""
_ADD_ACTION_CHUNK = f"""
INSERT INTO audit_action_counts_hourly AS p (tenant, hour, events, actions, counts)
SELECT {RANKED_ACTION_COUNTS}
FROM (
    SELECT tenant, date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00') AS hour, action,
           count(*) AS events
    FROM audit_events
    WHERE position > $1 AND position <= $2
    GROUP BY 1, 2, 3
) AS per_action
GROUP BY tenant, hour
{ADD_TO_ACTION_COUNTS}
"""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    """Events replayed."""
    rows: int
    """Rows of the rebuilt audit_counts_hourly."""
    action_rows: int
    """Rows of the rebuilt audit_action_counts_hourly."""


async def rebuild_count_projection(
    conn: asyncpg.Connection, *, chunk_size: int = 100_000, on_progress: Callable[[int, int], None] | None = None
) -> RebuildReport:
    """Replaces the count projections (audit_counts_hourly, audit_action_counts_hourly) with counts
    recomputed from the log.

    Args:
        conn: a connection of the schema owner.
        chunk_size: positions replayed per statement.
        on_progress: called with (positions replayed so far, positions to replay) after each chunk.
    """
    async with conn.transaction():
        last_position = await conn.fetchval(_LOCK_HEAD)
        # Positions are gapless from the first one retained; older partitions may have been dropped.
        first_position = await conn.fetchval("SELECT coalesce(min(position), 1) FROM audit_events")
        await conn.execute("DELETE FROM audit_counts_hourly")
        await conn.execute("DELETE FROM audit_action_counts_hourly")
        for low in range(first_position - 1, last_position, chunk_size):
            high = min(low + chunk_size, last_position)
            await conn.execute(_ADD_CHUNK, low, high)
            await conn.execute(_ADD_ACTION_CHUNK, low, high)
            if on_progress is not None:
                on_progress(high - first_position + 1, last_position - first_position + 1)
        events, rows, action_rows = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(events), 0) FROM audit_counts_hourly), "
            "(SELECT count(*) FROM audit_counts_hourly), (SELECT count(*) FROM audit_action_counts_hourly)"
        )
    return RebuildReport(events=int(events), rows=rows, action_rows=action_rows)
