"""The reactor's process: a durable catch-up subscription on the log that evaluates the enabled alert rules.

Each step reads the next page of the log after the checkpoint, evaluates it (core/reactor.py), and in ONE
transaction inserts the alerts (ON CONFLICT DO NOTHING: their ids are deterministic) and advances the checkpoint.
A crash between steps loses nothing and stores nothing twice: the restarted reactor rebuilds its windows (the
groups' latest stored alerts, and the events of the longest window before the checkpoint, fed without raising)
and goes on after the checkpoint.

Rules are read from the log, not from the alert_rules read model: on (re)start, the rules as of the checkpoint are
the latest rule-change event of each rule at or before it, and each later rule-change event is applied where it is
in the log, before the next event is evaluated. So a replay raises exactly the same alerts, however late the
reactor noticed a change. A rule that cannot be compiled is skipped with one warning, and its status
(alert_rule_status) says why, until a later revision compiles.

Free-text searches outside ASCII, which only the database folds exactly as ListEvents' search does, are decided by
asking it about those events (one query per rule and run of events between rule changes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

import asyncpg
import orjson
from audit.v1 import alert_rules_pb2 as pb
from audit.v1 import event_pb2

from ..core.alert_rules import CompiledRule, compile_rule, rule_from_json
from ..core.reactor import Alert, Reactor, RuleChange, rule_change_of
from ..core.records import datetime_to_micros, micros_to_datetime
from ..core.stored_alert import ALERT_COLUMNS
from ..core.stored_event import row_to_event
from ..errors import InvalidArgumentError
from ..waiting import pause
from .pool import DATABASE_FAILURES
from .queries import last_position_before, log_head, matching_positions, read_range

log = logging.getLogger(__name__)

SUBSCRIPTION = "alerts"
PAGE_EVENTS = 500
PAGE_BYTES = 4 * 1024 * 1024

_CHECKPOINT = "SELECT position FROM reactor_checkpoints WHERE subscription = $1"
_ADVANCE = """
INSERT INTO reactor_checkpoints (subscription, position, updated_at) VALUES ($1, $2, now())
ON CONFLICT (subscription) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""
_INSERT_ALERT = """
INSERT INTO alerts (tenant, id, rule_id, rule_revision, severity, group_key, window_start, window_end, message,
                    event_positions, destinations)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (tenant, id) DO NOTHING
"""
_ALERTS_LOCK = 0x4155_4449_545F_414C  # arbitrary constant: alerts are inserted by one transaction at a time
_LATEST_ALERTS = """
SELECT DISTINCT ON (rule_id, group_key) rule_id::text AS rule_id, rule_revision, group_key, window_start,
       event_positions
FROM alerts WHERE rule_id = ANY($1::uuid[]) AND window_end >= $2
ORDER BY rule_id, group_key, window_end DESC
"""


_LIST_ALERTS = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3"
_ALERTS_AFTER = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE seq > $1 ORDER BY seq LIMIT $2"


async def list_alerts(pool: asyncpg.Pool, tenant: str, after_seq: int, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` alerts of the tenant stored after `after_seq` (0: from the first), in storage order."""
    async with pool.acquire() as conn:
        return await conn.fetch(_LIST_ALERTS, tenant, after_seq, limit)


_ALERT_BYTES = "(256 + octet_length(message) + 8 * cardinality(event_positions))"
_SIZED_ALERTS = f"""
SELECT * FROM (
    SELECT page.*, sum({_ALERT_BYTES}) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - {_ALERT_BYTES} AS bytes_before,
           count(*) OVER () AS page_rows
    FROM ({_LIST_ALERTS}) AS page
) AS sized WHERE bytes_before < $4 ORDER BY seq
"""


async def alerts_after(conn: asyncpg.Connection, after_seq: int, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` alerts of every tenant stored after `after_seq`, in storage order (a delivery's next page).

    Storage order is commit order because one reactor inserts them, one transaction at a time: a later seq is
    never committed before an earlier one, so a reader that advances past a seq skips nothing."""
    return await conn.fetch(_ALERTS_AFTER, after_seq, limit)


async def alerts_page(
    pool: asyncpg.Pool, tenant: str, after_seq: int, limit: int, max_bytes: int
) -> tuple[list[asyncpg.Record], bool]:
    """The tenant's alerts stored after `after_seq`, at most `limit` and cut at about `max_bytes` (at least one):
    the rows, and whether more were found than returned (the page is not the last)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_SIZED_ALERTS, tenant, after_seq, limit, max_bytes)
    return rows, bool(rows) and (rows[0]["page_rows"] > len(rows) or len(rows) == limit)


_WATCH_START_NOW = "SELECT coalesce(max(seq), 0) FROM alerts WHERE tenant = $1"
_WATCH_START_AT = """
SELECT coalesce(
    (SELECT seq - 1 FROM alerts WHERE tenant = $1 AND created_at >= $2 ORDER BY created_at, seq LIMIT 1),
    (SELECT max(seq) FROM alerts WHERE tenant = $1),
    0
)
"""


async def alerts_start(pool: asyncpg.Pool, tenant: str, stored_from: dt.datetime | None) -> int:
    """Where a watch of the tenant's alerts starts (the seq it reads after): before the first alert stored at or
    after `stored_from`, or after the newest alert (None: now)."""
    async with pool.acquire() as conn:
        if stored_from is None:
            return await conn.fetchval(_WATCH_START_NOW, tenant)
        return await conn.fetchval(_WATCH_START_AT, tenant, stored_from)


class RuleCompiler:
    """Compiles the rules of rule-change events, warning once per (rule, revision) that does not compile, and
    collects each rule's status (why its revision is broken, or None) until the next step stores them."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, int]] = set()
        self._statuses: dict[tuple[str, str], tuple[int, str | None]] = {}

    def compile(self, change: RuleChange) -> CompiledRule | None:
        """The rule to evaluate from the change on; None when it was deleted, is disabled or does not compile."""
        rule = change.rule
        if rule is None or not rule.enabled:
            self._statuses[(change.tenant, change.rule_id)] = (0, None)
            return None
        try:
            compiled = compile_rule(rule)
        except InvalidArgumentError as error:
            self._statuses[(change.tenant, change.rule_id)] = (rule.revision, str(error))
            if (rule.id, rule.revision) not in self._warned:
                self._warned.add((rule.id, rule.revision))
                log.warning("alert rule %s (tenant %s) is skipped: %s", rule.id, rule.tenant, error)
            return None
        self._statuses[(change.tenant, change.rule_id)] = (rule.revision, None)
        return compiled

    def take_statuses(self) -> dict[tuple[str, str], tuple[int, str | None]]:
        """The statuses collected since the last call: (tenant, rule id) -> (revision, broken reason or None)."""
        statuses, self._statuses = self._statuses, {}
        return statuses


_RULE_CHANGES_UP_TO = """
SELECT DISTINCT ON (tenant, resource_id) tenant, resource_id, action, change_after::text AS after
FROM audit_events WHERE resource_type = 'audit.alert_rule' AND position <= $1
ORDER BY tenant, resource_id, position DESC
"""
_RULES_UP_TO = "SELECT tenant, id::text AS id, rule::text AS rule FROM alert_rules WHERE last_position <= $1"
_STORE_STATUS = """
INSERT INTO alert_rule_status (tenant, rule_id, revision, broken_reason, updated_at) VALUES ($1, $2, $3, $4, now())
ON CONFLICT (tenant, rule_id) DO UPDATE
SET revision = excluded.revision, broken_reason = excluded.broken_reason, updated_at = excluded.updated_at
WHERE alert_rule_status.revision <> excluded.revision OR alert_rule_status.broken_reason <> excluded.broken_reason
"""
_CLEAR_STATUS = "DELETE FROM alert_rule_status WHERE tenant = $1 AND rule_id = $2"


def _rule_of(tenant: str, rule_id: str, state: str | None) -> pb.AlertRule | None:
    if state is None or state == "null":
        return None
    rule = rule_from_json(orjson.loads(state))
    rule.tenant, rule.id = tenant, rule_id
    return rule


async def rules_as_of(pool: asyncpg.Pool, position: int) -> list[RuleChange]:
    """Every rule as of `position`: the latest rule-change event of each rule at or before it (served by the
    partial index audit_events_alert_rule_changes). A rule whose events retention has removed is taken from the
    read model when its latest change is at or before `position` (then that row is its state there)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_RULE_CHANGES_UP_TO, position)
        kept = await conn.fetch(_RULES_UP_TO, position)
    changes = {
        (row["tenant"], row["resource_id"]): RuleChange(
            row["tenant"], row["resource_id"], _rule_of(row["tenant"], row["resource_id"], row["after"])
        )
        for row in rows
    }
    for row in kept:
        key = (row["tenant"], row["id"])
        if key not in changes:
            changes[key] = RuleChange(row["tenant"], row["id"], _rule_of(row["tenant"], row["id"], row["rule"]))
    return [changes[key] for key in sorted(changes)]


def reactor_of(changes: Sequence[RuleChange], compiler: RuleCompiler) -> Reactor:
    compiled = [compiler.compile(change) for change in changes]
    return Reactor([rule for rule in compiled if rule is not None])


async def evaluate(
    pool: asyncpg.Pool, reactor: Reactor, compiler: RuleCompiler, events: Sequence[event_pb2.AuditEvent], *, warm: bool
) -> list[Alert]:
    """Feeds the events (warm: without raising) in order, applying each rule-change event before evaluating it;
    what the rules cannot decide in memory is asked of the database, one query per rule and run of events."""
    alerts: list[Alert] = []
    run: list[event_pb2.AuditEvent] = []

    async def flush() -> None:
        confirmed: set[tuple[str, int]] = set()
        for rule_id, positions in reactor.undecided(run).items():
            compiled = reactor.rule(rule_id)
            assert compiled is not None
            found = await matching_positions(pool, positions, compiled.where)
            confirmed.update((rule_id, position) for position in found)
        for event in run:
            if warm:
                reactor.warm(event, confirmed)
            else:
                alerts.extend(reactor.feed(event, confirmed))
        run.clear()

    for event in events:
        change = rule_change_of(event)
        if change is not None:
            await flush()
            reactor.apply_rule_change(change.tenant, change.rule_id, compiler.compile(change))
        run.append(event)
    await flush()
    return alerts


async def checkpoint(conn: asyncpg.Connection, subscription: str = SUBSCRIPTION) -> int:
    return await conn.fetchval(_CHECKPOINT, subscription) or 0


async def store_step(
    conn: asyncpg.Connection,
    alerts: Sequence[Alert],
    position: int,
    subscription: str,
    statuses: Mapping[tuple[str, str], tuple[int, str | None]] | None = None,
) -> None:
    """Inserts the alerts, stores the rules' statuses (RuleCompiler.take_statuses) and advances the checkpoint to
    `position`, in one transaction."""
    async with conn.transaction():
        for (tenant, rule_id), (revision, reason) in (statuses or {}).items():
            if reason is None:
                await conn.execute(_CLEAR_STATUS, tenant, rule_id)
            else:
                await conn.execute(_STORE_STATUS, tenant, rule_id, revision, reason)
        if alerts:
            # One writer of alerts at a time (even with two reactors running): seq order is then commit order, so
            # a reader that has seen seq S and reads `seq > S` never misses an alert committed later (WatchAlerts).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ALERTS_LOCK)
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
                        list(a.destinations),
                    )
                    for a in alerts
                ],
            )
        await conn.execute(_ADVANCE, subscription, position)


async def rebuild(pool: asyncpg.Pool, compiler: RuleCompiler, position: int) -> Reactor:
    """The reactor as an uninterrupted run would have it after `position` (the checkpoint): the rules as of it,
    the windows warmed with the events of its longest window before it, evaluated with the rules as of each
    (rule changes in that stretch applied where they are), and the groups' latest stored alerts restored."""
    reactor = reactor_of(await rules_as_of(pool, position), compiler)
    window = reactor.longest_window
    if not position or not window:
        return reactor
    async with pool.acquire() as conn:
        recorded = await conn.fetchval("SELECT recorded_at FROM audit_events WHERE position = $1", position)
    if recorded is None:  # removed by retention: nothing of the window is left to warm with
        return reactor
    since = micros_to_datetime(datetime_to_micros(recorded) - window)
    after = await last_position_before(pool, since)
    warmed = reactor_of(await rules_as_of(pool, after), compiler)
    while after < position:
        page = await read_range(pool, after, position, PAGE_EVENTS, PAGE_BYTES)
        if not page.rows:
            break
        await evaluate(pool, warmed, compiler, [row_to_event(row) for row in page.rows], warm=True)
        after = page.rows[-1]["position"]
    async with pool.acquire() as conn:
        rows = await conn.fetch(_LATEST_ALERTS, warmed.rule_ids, since)
    warmed.restore(
        Alert(
            tenant="",
            id="",
            rule_id=row["rule_id"],
            rule_revision=row["rule_revision"],
            severity=0,
            group_key=row["group_key"],
            window_start=datetime_to_micros(row["window_start"]),
            window_end=0,
            message="",
            event_positions=tuple(row["event_positions"]),
        )
        for row in rows
    )
    return warmed


async def react(
    pool: asyncpg.Pool,
    stop: asyncio.Event,
    *,
    subscription: str = SUBSCRIPTION,
    poll_seconds: float = 0.2,
    page_events: int = PAGE_EVENTS,
    report: Callable[[str | None], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> None:
    """Evaluates the log after the checkpoint until `stop` is set.

    Args:
        report: told None each time the reactor has (re)built its state and evaluates, and the problem each time it
            must retry from the checkpoint (the react process's /readyz shows it).
        on_step: called after each step stored (new events evaluated, their alerts stored): the destinations of
            the process look at once instead of at their next poll (delivery/doorbell.py).
    """
    compiler = RuleCompiler()
    reactor: Reactor | None = None
    position = 0
    while not stop.is_set():
        try:
            if reactor is None:  # first time, or after an error: rebuild from the log
                async with pool.acquire() as conn:
                    position = await checkpoint(conn, subscription)
                reactor = await rebuild(pool, compiler, position)
                async with pool.acquire() as conn:
                    await store_step(conn, [], position, subscription, compiler.take_statuses())
                log.info("reactor: %d rules, resuming after position %d", len(reactor.rule_ids), position)
                if report is not None:
                    report(None)
            head = await log_head(pool)
            if head <= position:
                await pause(until=stop, seconds=poll_seconds)
                continue
            page = await read_range(pool, position, head, page_events, PAGE_BYTES)
            if not page.rows:  # removed by retention before they were evaluated: nothing left to evaluate
                async with pool.acquire() as conn:
                    await store_step(conn, [], head, subscription)
                position = head
                continue
            events = [row_to_event(row) for row in page.rows]
            alerts = await evaluate(pool, reactor, compiler, events, warm=False)
            async with pool.acquire() as conn:
                await store_step(conn, alerts, page.rows[-1]["position"], subscription, compiler.take_statuses())
            position = page.rows[-1]["position"]
            if on_step is not None:
                on_step()
        except DATABASE_FAILURES as error:
            log.warning("reactor: %s; retrying from the checkpoint", error)
            if report is not None:
                report(f"retrying from the checkpoint: {type(error).__name__}")
            reactor = None  # the state may be ahead of the checkpoint: rebuild it
            await pause(until=stop, seconds=1.0)
