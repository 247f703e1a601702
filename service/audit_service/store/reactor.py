"""The reactor's process: a durable catch-up subscription on the log that evaluates the enabled alert rules.

Each step reads the next page of the log after the checkpoint, evaluates it (core/reactor.py), and in ONE
transaction inserts the alerts (ON CONFLICT DO NOTHING: their ids are deterministic) and advances the checkpoint.
A crash between steps loses nothing and stores nothing twice: the restarted reactor rebuilds its windows (the
groups' latest stored alerts, and the events of the longest window before the checkpoint, fed without raising)
and goes on after the checkpoint. Rules are reloaded, and the state rebuilt the same way, when their read model
changes. A rule that no longer compiles is skipped with one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import asyncpg
import orjson
from audit.v1 import alert_rules_pb2 as pb

from ..core.alert_rules import CompiledRule, compile_rule, rule_from_json
from ..core.reactor import Alert, Reactor
from ..core.records import datetime_to_micros, micros_to_datetime
from ..core.stored_alert import ALERT_COLUMNS
from ..core.stored_event import row_to_event
from ..errors import InvalidArgumentError, UnavailableError
from .queries import last_position_before, log_head, read_range

log = logging.getLogger(__name__)

SUBSCRIPTION = "alerts"
PAGE_EVENTS = 500
PAGE_BYTES = 4 * 1024 * 1024

_RULES_VERSION = "SELECT count(*), coalesce(max(last_position), 0) FROM alert_rules"
"""Changes whenever a rule is created, updated or deleted (each change has a new, higher position)."""
_CHECKPOINT = "SELECT position FROM reactor_checkpoints WHERE subscription = $1"
_ADVANCE = """
INSERT INTO reactor_checkpoints (subscription, position, updated_at) VALUES ($1, $2, now())
ON CONFLICT (subscription) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""
_INSERT_ALERT = """
INSERT INTO alerts (tenant, id, rule_id, rule_revision, severity, group_key, window_start, window_end, message,
                    event_positions)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (tenant, id) DO NOTHING
"""
_LATEST_ALERTS = """
SELECT DISTINCT ON (rule_id, group_key) rule_id::text AS rule_id, group_key, window_start, event_positions
FROM alerts WHERE rule_id = ANY($1::uuid[]) AND window_end >= $2
ORDER BY rule_id, group_key, window_end DESC
"""


_LIST_ALERTS = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3"
_ALERTS_AFTER = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE seq > $1 ORDER BY seq LIMIT $2"


async def list_alerts(pool: asyncpg.Pool, tenant: str, after_seq: int, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` alerts of the tenant stored after `after_seq` (0: from the first), in storage order."""
    async with pool.acquire() as conn:
        return await conn.fetch(_LIST_ALERTS, tenant, after_seq, limit)


async def alerts_after(conn: asyncpg.Connection, after_seq: int, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` alerts of every tenant stored after `after_seq`, in storage order (a delivery's next page).

    Storage order is commit order because one reactor inserts them, one transaction at a time: a later seq is
    never committed before an earlier one, so a reader that advances past a seq skips nothing."""
    return await conn.fetch(_ALERTS_AFTER, after_seq, limit)


class RuleCompiler:
    """Compiles stored rules, warning once per (rule, revision) that no longer compiles.

    Marking such a rule broken (with the reason, visible to its admins) is a follow-up."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, int]] = set()

    def compile(self, rules: Sequence[pb.AlertRule]) -> list[CompiledRule]:
        compiled = []
        for rule in rules:
            try:
                compiled.append(compile_rule(rule))
            except InvalidArgumentError as error:
                if (rule.id, rule.revision) not in self._warned:
                    self._warned.add((rule.id, rule.revision))
                    log.warning("alert rule %s (tenant %s) is skipped: %s", rule.id, rule.tenant, error)
        return compiled


async def load_rules(conn: asyncpg.Connection) -> tuple[tuple[int, int], list[pb.AlertRule]]:
    """The rules' version and every enabled rule, read in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = tuple(await conn.fetchrow(_RULES_VERSION))
        rows = await conn.fetch("SELECT rule::text AS rule FROM alert_rules WHERE enabled ORDER BY tenant, id")
    return version, [rule_from_json(orjson.loads(row["rule"])) for row in rows]  # type: ignore[return-value]


async def checkpoint(conn: asyncpg.Connection, subscription: str = SUBSCRIPTION) -> int:
    return await conn.fetchval(_CHECKPOINT, subscription) or 0


async def store_step(conn: asyncpg.Connection, alerts: Sequence[Alert], position: int, subscription: str) -> None:
    """Inserts the alerts and advances the checkpoint to `position`, in one transaction."""
    async with conn.transaction():
        if alerts:
            await conn.executemany(
                _INSERT_ALERT,
                [
                    (
                        a.tenant,
                        a.id,
                        a.rule_id,
                        a.rule_revision,
                        a.severity,
                        a.group_key,
                        micros_to_datetime(a.window_start),
                        micros_to_datetime(a.window_end),
                        a.message,
                        list(a.event_positions),
                    )
                    for a in alerts
                ],
            )
        await conn.execute(_ADVANCE, subscription, position)


async def rebuild_state(pool: asyncpg.Pool, reactor: Reactor, position: int) -> None:
    """Restores the groups' latest alerts and warms the windows with the events of the longest window up to
    `position` (the checkpoint), raising nothing."""
    window = reactor.longest_window
    if not position or not window:
        return
    async with pool.acquire() as conn:
        recorded = await conn.fetchval("SELECT recorded_at FROM audit_events WHERE position = $1", position)
        if recorded is None:  # removed by retention: nothing of the window is left to warm with
            return
        since = micros_to_datetime(datetime_to_micros(recorded) - window)
        rule_ids = list({rule_id for rule_id in reactor.rule_ids})
        rows = await conn.fetch(_LATEST_ALERTS, rule_ids, since)
    reactor.restore(
        Alert(
            tenant="",
            id="",
            rule_id=row["rule_id"],
            rule_revision=0,
            severity=0,
            group_key=row["group_key"],
            window_start=datetime_to_micros(row["window_start"]),
            window_end=0,
            message="",
            event_positions=tuple(row["event_positions"]),
        )
        for row in rows
    )
    after = await last_position_before(pool, since)
    while after < position:
        page = await read_range(pool, after, position, PAGE_EVENTS, PAGE_BYTES)
        if not page.rows:
            break
        for row in page.rows:
            reactor.warm(row_to_event(row))
        after = page.rows[-1]["position"]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def react(
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    subscription: str = SUBSCRIPTION,
    poll_seconds: float = 0.2,
    page_events: int = PAGE_EVENTS,
) -> None:
    """Evaluates the log after the checkpoint until `stop` is set."""
    compiler = RuleCompiler()
    version: tuple[int, int] | None = None
    reactor = Reactor([])
    position = 0
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                current, rules = await load_rules(conn)
                if current != version:  # first time, a rule changed, or after an error: rebuild from the store
                    position = await checkpoint(conn, subscription)
                    reactor = Reactor(compiler.compile(rules))
                    await rebuild_state(pool, reactor, position)
                    version = current
                    log.info("reactor: %d rules, resuming after position %d", len(reactor.rule_ids), position)
            head = await log_head(pool)
            if head <= position:
                await _wait(stop, poll_seconds)
                continue
            page = await read_range(pool, position, head, page_events, PAGE_BYTES)
            if not page.rows:  # removed by retention before they were evaluated: nothing left to evaluate
                async with pool.acquire() as conn:
                    await store_step(conn, [], head, subscription)
                position = head
                continue
            alerts = [alert for row in page.rows for alert in reactor.feed(row_to_event(row))]
            async with pool.acquire() as conn:
                await store_step(conn, alerts, page.rows[-1]["position"], subscription)
            position = page.rows[-1]["position"]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, UnavailableError) as error:
            log.warning("reactor: %s; retrying from the checkpoint", error)
            version = None  # the state may be ahead of the checkpoint: rebuild it
            await _wait(stop, 1.0)
