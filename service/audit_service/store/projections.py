"""Rebuilding read models from the log: `audit-service rebuild-projections`.

The projections (hourly counts, per-action counts, resource stream heads) are normally kept by the append
transaction (store/append.py). A rebuild recomputes them from audit_events alone (the stream heads from
audit_resource_baseline, the streams as they stood before the oldest retained event, then the log), in
position chunks, inside one transaction that holds the log head: appends wait meanwhile, readers keep
reading the old rows until COMMIT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from .alert_rules import rebuild_alert_rules
from .append import ADD_TO_ACTION_COUNTS, RANKED_ACTION_COUNTS
from .destinations import rebuild_destinations

_LOCK_HEAD = "SELECT last_position FROM audit_log_head FOR UPDATE"
HOUR_OF_EVENT = "date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00')"
"""The UTC hour of occurred_at the count projections count an event in (also used by retention's recount)."""
_ADD_CHUNK = f"""
INSERT INTO audit_counts_hourly (tenant, hour, action, resource_type, outcome, actor_type, events)
SELECT tenant, {HOUR_OF_EVENT}, action, resource_type,
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
    SELECT tenant, {HOUR_OF_EVENT} AS hour, action,
           count(*) AS events
    FROM audit_events
    WHERE position > $1 AND position <= $2
    GROUP BY 1, 2, 3
) AS per_action
GROUP BY tenant, hour
{ADD_TO_ACTION_COUNTS}
"""


# Folds the stream events of (low, high] of a source table into a table of stream heads, by the rule of
# core/streams.py: the latest revision and position, and the change.after of the latest event with a change
# (the head's own state when no event of the range has one).
_FOLD_STREAMS = """
WITH stream_events AS (
    SELECT tenant, coalesce(resource_type, '') AS resource_type, resource_id, position, stream_revision,
           change_after, change_before IS NOT NULL OR change_after IS NOT NULL AS changed
    FROM {source}
    WHERE position > $1 AND position <= $2 AND stream_revision IS NOT NULL
), latest AS (
    SELECT DISTINCT ON (tenant, resource_type, resource_id)
           tenant, resource_type, resource_id, stream_revision, position
    FROM stream_events
    ORDER BY tenant, resource_type, resource_id, position DESC
), last_change AS (
    SELECT DISTINCT ON (tenant, resource_type, resource_id) tenant, resource_type, resource_id, change_after
    FROM stream_events
    WHERE changed
    ORDER BY tenant, resource_type, resource_id, position DESC
)
INSERT INTO {target} (tenant, resource_type, resource_id, revision, last_position, state)
SELECT l.tenant, l.resource_type, l.resource_id, l.stream_revision, l.position,
       CASE WHEN c.resource_id IS NOT NULL THEN c.change_after ELSE h.state END
FROM latest AS l
LEFT JOIN last_change AS c USING (tenant, resource_type, resource_id)
LEFT JOIN {target} AS h USING (tenant, resource_type, resource_id)
ON CONFLICT (tenant, resource_type, resource_id) DO UPDATE
SET revision = excluded.revision, last_position = excluded.last_position, state = excluded.state
"""


async def fold_streams(conn: asyncpg.Connection, *, source: str, target: str, low: int, high: int) -> None:
    """Folds the stream events with positions in (low, high] of `source` into the heads in `target`.

    Args:
        source: audit_events or one of its partitions (a trusted identifier, not user input).
        target: audit_resource_heads or audit_resource_baseline.
    """
    await conn.execute(_FOLD_STREAMS.format(source=source, target=target), low, high)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    """Events replayed."""
    rows: int
    """Rows of the rebuilt audit_counts_hourly."""
    action_rows: int
    """Rows of the rebuilt audit_action_counts_hourly."""
    streams: int
    """Rows of the rebuilt audit_resource_heads."""
    alert_rules: int = 0
    """Rows of the rebuilt alert_rules (the states of the rules' streams)."""
    destinations: int = 0
    """Rows of the rebuilt destinations (the states of their streams; their secrets are kept, not in the log)."""


async def rebuild_projections(
    conn: asyncpg.Connection, *, chunk_size: int = 100_000, on_progress: Callable[[int, int], None] | None = None
) -> RebuildReport:
    """Replaces the projections (audit_counts_hourly, audit_action_counts_hourly, audit_resource_heads, and
    alert_rules and destinations from the heads) with their values recomputed from the log.

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
        await conn.execute("DELETE FROM audit_resource_heads")
        await conn.execute("INSERT INTO audit_resource_heads SELECT * FROM audit_resource_baseline")
        for low in range(first_position - 1, last_position, chunk_size):
            high = min(low + chunk_size, last_position)
            await conn.execute(_ADD_CHUNK, low, high)
            await conn.execute(_ADD_ACTION_CHUNK, low, high)
            await fold_streams(conn, source="audit_events", target="audit_resource_heads", low=low, high=high)
            if on_progress is not None:
                on_progress(high - first_position + 1, last_position - first_position + 1)
        events, rows, action_rows, streams = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(events), 0) FROM audit_counts_hourly), "
            "(SELECT count(*) FROM audit_counts_hourly), (SELECT count(*) FROM audit_action_counts_hourly), "
            "(SELECT count(*) FROM audit_resource_heads)"
        )
        alert_rules = await rebuild_alert_rules(conn)
        destinations = await rebuild_destinations(conn)
    return RebuildReport(
        events=int(events),
        rows=rows,
        action_rows=action_rows,
        streams=streams,
        alert_rules=alert_rules,
        destinations=destinations,
    )
