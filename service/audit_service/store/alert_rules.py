"""Alert rules, event-sourced: each change appends an audit event to the log (through LogAppender, so positions,
hash chains, resource streams, counts and de-duplication stay right) and writes the alert_rules read model in the
same transaction. The rule's resource stream in audit_resource_heads holds the same state, which is what the read
model is rebuilt from (rebuild_alert_rules).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson
from audit.v1 import alert_rules_pb2 as pb
from audit_client import new_event_id

from ..core.alert_rules import apply_update, rule_from_json, rule_to_json, validate_rule
from ..core.records import CHANGE_AFTER_INDEX, Content
from ..core.reserved import ALERT_RULE_ACTION_PREFIX as ACTION_PREFIX
from ..core.reserved import ALERT_RULE_RESOURCE_TYPE as RESOURCE_TYPE
from ..errors import InvalidArgumentError, NotFoundError
from .append import AppendResult, LogAppender
from .config_changes import Actor, append_change, check_revision
from .config_changes import change_event as config_change_event
from .destinations import missing_webhook_destinations

_SELECT = "SELECT rule::text AS rule, revision FROM alert_rules WHERE tenant = $1 AND id = $2"
_INSERT = """
INSERT INTO alert_rules (tenant, id, revision, enabled, rule, last_position) VALUES ($1, $2, $3, $4, $5::jsonb, $6)
"""
_UPDATE = """
UPDATE alert_rules SET revision = $3, enabled = $4, rule = $5::jsonb, last_position = $6 WHERE tenant = $1 AND id = $2
"""
_DELETE = "DELETE FROM alert_rules WHERE tenant = $1 AND id = $2"
_WITH_STATUS = """
SELECT r.id::text AS id, r.rule::text AS rule, s.broken_reason FROM alert_rules r
LEFT JOIN alert_rule_status s ON s.tenant = r.tenant AND s.rule_id = r.id AND s.revision = r.revision
"""
"""Rules with the reactor's status of their current revision (an older revision's is not theirs)."""
_GET = _WITH_STATUS + "WHERE r.tenant = $1 AND r.id = $2"
_LIST = (
    _WITH_STATUS
    + """
WHERE r.tenant = $1 AND r.id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') ORDER BY r.id LIMIT $3
"""
)
_REBUILD = """
INSERT INTO alert_rules (tenant, id, revision, enabled, rule, last_position)
SELECT tenant, resource_id::uuid, (state->>'revision')::bigint, coalesce((state->>'enabled')::boolean, false), state,
       last_position
FROM audit_resource_heads
WHERE resource_type = $1 AND state IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """What a change stored: the rule after it (before it, for a deletion) and the append."""

    rule: pb.AlertRule
    append: AppendResult


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def change_event(
    verb: str, tenant: str, rule_id: str, display_name: str, actor: Actor, before: dict | None, after: dict | None
) -> Content:
    """The log content recording one change of a rule."""
    return config_change_event(
        action=ACTION_PREFIX + verb,
        resource_type=RESOURCE_TYPE,
        tenant=tenant,
        resource_id=rule_id,
        name=display_name,
        actor=actor,
        before=before,
        after=after,
        message=f"alert rule {display_name[:200]!r} {verb}d",
    )


def _uuid(rule_id: str, field: str) -> str:
    if not rule_id:
        raise InvalidArgumentError(field, "is required")
    try:
        return str(uuid.UUID(rule_id))
    except ValueError:
        raise InvalidArgumentError(field, f"is not a UUID: {rule_id[:64]!r}") from None


async def _stored(conn: asyncpg.Connection, tenant: str, rule_id: str, *, lock: bool) -> pb.AlertRule:
    row = await conn.fetchrow(_SELECT + (" FOR UPDATE" if lock else ""), tenant, rule_id)
    if row is None:  # also another tenant's rule: its existence is not disclosed
        raise NotFoundError(f"alert rule {rule_id} not found")
    return rule_from_json(orjson.loads(row["rule"]))


async def _check_destinations(conn: asyncpg.Connection, rule: pb.AlertRule, prefix: str) -> None:
    """Every destination the rule names is a webhook of its tenant: an alert is never routed nowhere."""
    missing = await missing_webhook_destinations(conn, rule.tenant, list(rule.destinations))
    if missing:
        index, name = missing[0]
        raise InvalidArgumentError(
            f"{prefix}.destinations[{index}]", f"tenant {rule.tenant!r} has no webhook destination named {name!r}"
        )


async def _write_rule(
    conn: asyncpg.Connection, statement: str, rule: pb.AlertRule, content: Content, result: AppendResult
) -> None:
    """Inserts or updates the rule's row with the state the log holds (the event's change.after, as stored)."""
    state = orjson.dumps(content[CHANGE_AFTER_INDEX]).decode()
    await conn.execute(statement, rule.tenant, rule.id, rule.revision, rule.enabled, state, result.last_position)


async def create_rule(
    conn: asyncpg.Connection, appender: LogAppender, rule: pb.AlertRule, actor: Actor, *, prefix: str = "alert_rule"
) -> RuleChange:
    """Stores a new rule of rule.tenant (checked by the caller) with a new id, revision 1, and its creation event.

    Args:
        prefix: how errors name the rule (alert_rule, or overrides for a rule made from a template).
    """
    created = pb.AlertRule()
    created.CopyFrom(rule)
    created.ClearField("broken_reason")  # output only: set from the reactor's status, never stored in the log
    created.id = new_event_id()  # a UUIDv7: id order is creation order
    created.revision = 1
    now = _now()
    created.create_time.FromDatetime(now)
    created.update_time.FromDatetime(now)
    validate_rule(created, prefix)
    content = change_event(
        "create", created.tenant, created.id, created.display_name, actor, None, rule_to_json(created)
    )
    async with conn.transaction():
        await _check_destinations(conn, created, prefix)
        result = await append_change(conn, appender, content)
        await _write_rule(conn, _INSERT, created, content, result)
    return RuleChange(created, result)


async def get_rule(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, rule_id: str) -> pb.AlertRule:
    """The tenant's rule (NotFoundError when it has none with this id)."""
    rule_id = _uuid(rule_id, "id")
    row = await conn.fetchrow(_GET, tenant, rule_id)
    if row is None:
        raise NotFoundError(f"alert rule {rule_id} not found")
    return _with_status(row)


def _with_status(row: asyncpg.Record) -> pb.AlertRule:
    rule = rule_from_json(orjson.loads(row["rule"]))
    rule.broken_reason = row["broken_reason"] or ""
    return rule


async def list_rules(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, after_id: str | None, limit: int
) -> list[pb.AlertRule]:
    """Up to `limit` rules of the tenant with ids after `after_id`, in id order."""
    rows = await conn.fetch(_LIST, tenant, after_id, limit)
    return [_with_status(row) for row in rows]


async def enabled_rules(conn: asyncpg.Connection | asyncpg.Pool) -> list[pb.AlertRule]:
    """Every tenant's enabled rules, by tenant and id (what an evaluator loads)."""
    rows = await conn.fetch("SELECT rule::text AS rule FROM alert_rules WHERE enabled ORDER BY tenant, id")
    return [rule_from_json(orjson.loads(row["rule"])) for row in rows]


def _check_revision(current: pb.AlertRule, expected: int, field: str) -> None:
    check_revision(f"alert rule {current.id}", current.revision, expected, field)


async def update_rule(
    conn: asyncpg.Connection,
    appender: LogAppender,
    tenant: str,
    change: pb.AlertRule,
    paths: Sequence[str],
    actor: Actor,
) -> RuleChange:
    """Applies the fields of `change` named by `paths` to the tenant's rule change.id, at change.revision when
    it is not 0 (AbortedError otherwise), and records the update."""
    rule_id = _uuid(change.id, "alert_rule.id")
    async with conn.transaction():
        current = await _stored(conn, tenant, rule_id, lock=True)
        _check_revision(current, change.revision, "alert_rule.revision")
        updated = apply_update(current, change, paths)
        updated.revision = current.revision + 1
        updated.update_time.FromDatetime(_now())
        validate_rule(updated)
        await _check_destinations(conn, updated, "alert_rule")
        content = change_event(
            "update", tenant, rule_id, updated.display_name, actor, rule_to_json(current), rule_to_json(updated)
        )
        result = await append_change(conn, appender, content)
        await _write_rule(conn, _UPDATE, updated, content, result)
    return RuleChange(updated, result)


async def delete_rule(
    conn: asyncpg.Connection, appender: LogAppender, tenant: str, rule_id: str, revision: int, actor: Actor
) -> RuleChange:
    """Deletes the tenant's rule (at `revision` when it is not 0) and records the deletion."""
    rule_id = _uuid(rule_id, "id")
    async with conn.transaction():
        current = await _stored(conn, tenant, rule_id, lock=True)
        _check_revision(current, revision, "revision")
        content = change_event("delete", tenant, rule_id, current.display_name, actor, rule_to_json(current), None)
        result = await append_change(conn, appender, content)
        await conn.execute(_DELETE, tenant, rule_id)
    return RuleChange(current, result)


async def rebuild_alert_rules(conn: asyncpg.Connection) -> int:
    """Replaces the alert_rules read model with the states of the rules' resource streams (audit_resource_heads,
    itself a projection of the log); returns the rows. Call it in the transaction that rebuilt those heads, or
    alone (as the schema owner)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM alert_rules")
        await conn.execute(_REBUILD, RESOURCE_TYPE)
        return await conn.fetchval("SELECT count(*) FROM alert_rules")
