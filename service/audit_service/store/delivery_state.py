"""The subscriptions of destinations: checkpoints, health and delivery attempts (destination_state and
delivery_attempts), and their lag behind the log or the alerts.

A replay bumps a subscription's generation; a delivery finishing after it must not overwrite the replayed
checkpoint, so every advance names the generation it started from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
from audit.v1 import destinations_pb2 as pb

_STATE = """
SELECT s.checkpoint, s.generation, s.consecutive_failures, s.last_error, s.last_attempt_at, s.last_success_at
FROM destination_state s WHERE s.tenant = $1 AND s.name = $2
"""
_ADVANCE = """
UPDATE destination_state SET checkpoint = $4, consecutive_failures = 0, last_error = '',
    last_attempt_at = clock_timestamp(), last_success_at = clock_timestamp()
WHERE tenant = $1 AND name = $2 AND generation = $3
"""
_SKIP = "UPDATE destination_state SET checkpoint = $4 WHERE tenant = $1 AND name = $2 AND generation = $3"
_FAILED = """
UPDATE destination_state SET consecutive_failures = consecutive_failures + 1, last_error = $4,
    last_attempt_at = clock_timestamp()
WHERE tenant = $1 AND name = $2 AND generation = $3
"""
_ATTEMPT = """
INSERT INTO delivery_attempts (tenant, destination, delivery_id, attempt, outcome, http_status, error, duration_ms,
                               items)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_ATTEMPTS = """
SELECT seq, delivery_id, attempt, outcome, http_status, error, attempted_at, duration_ms, items
FROM delivery_attempts WHERE tenant = $1 AND destination = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4
"""
FAILING_AFTER = 3
"""Consecutive failed attempts after which a destination shows as failing."""


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    checkpoint: int
    generation: int
    consecutive_failures: int
    last_error: str
    last_attempt_at: dt.datetime | None
    last_success_at: dt.datetime | None


async def state_of(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, name: str) -> SubscriptionState | None:
    row = await conn.fetchrow(_STATE, tenant, name)
    return None if row is None else SubscriptionState(**dict(row))


async def advance(
    conn: asyncpg.Connection, tenant: str, name: str, generation: int, checkpoint: int, *, success: bool = True
) -> bool:
    """Moves the checkpoint after a delivery (success) or past what is not delivered (nothing of the destination's
    there, or an alert given up); False when a replay (or a deletion) came in between."""
    statement = _ADVANCE if success else _SKIP
    return await conn.execute(statement, tenant, name, generation, checkpoint) == "UPDATE 1"


async def record_failure(conn: asyncpg.Connection, tenant: str, name: str, generation: int, error: str) -> None:
    await conn.execute(_FAILED, tenant, name, generation, error[:1024])


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: str
    attempt: int
    outcome: int
    http_status: int
    error: str
    duration_ms: int
    items: int


async def record_attempt(conn: asyncpg.Connection, tenant: str, name: str, attempt: Attempt) -> None:
    await conn.execute(
        _ATTEMPT,
        tenant,
        name,
        attempt.delivery_id,
        attempt.attempt,
        attempt.outcome,
        attempt.http_status,
        attempt.error[:1024],
        attempt.duration_ms,
        attempt.items,
    )


async def list_attempts(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, name: str, before_seq: int, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` attempts of the destination older than `before_seq`, newest first."""
    return await conn.fetch(_ATTEMPTS, tenant, name, before_seq, limit)


async def lag_of(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, *, alerts: bool, checkpoint: int
) -> tuple[int, float]:
    """The head (log position, or the tenant's latest alert) and the age in seconds of the tenant's oldest event
    or alert after the checkpoint (0.0 when there is none; never another tenant's: their timing is theirs)."""
    if alerts:
        row = await conn.fetchrow(
            """
            SELECT (SELECT coalesce(max(seq), 0) FROM alerts WHERE tenant = $1) AS head,
                   (SELECT created_at FROM alerts WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT 1) AS oldest
            """,
            tenant,
            checkpoint,
        )
    else:
        row = await conn.fetchrow(
            """
            SELECT (SELECT last_position FROM audit_log_head) AS head,
                   (SELECT recorded_at FROM audit_events WHERE tenant = $2 AND position > $1
                    ORDER BY position LIMIT 1) AS oldest
            """,
            checkpoint,
            tenant,
        )
    oldest = row["oldest"]
    age = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds()) if oldest is not None else 0.0
    return row["head"], age


def delivery_state(paused: bool, state: SubscriptionState) -> int:
    if paused:
        return pb.DELIVERY_STATE_PAUSED
    if state.consecutive_failures >= FAILING_AFTER:
        return pb.DELIVERY_STATE_FAILING
    return pb.DELIVERY_STATE_ACTIVE
