"""Destinations, event-sourced like alert rules (store/config_changes.py): each change appends an audit event of
the tenant WITHOUT the secret, and writes the destinations read model in the same transaction. The secret is kept
in destination_secrets only. A new destination's subscription (destination_state) starts at the current head: a
streaming destination receives the events committed after its creation (ReplayDestination for older ones), a
webhook the alerts stored after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import orjson
from audit.v1 import destinations_pb2 as pb

from ..core.destinations import (
    ALERT_KINDS,
    SIGNED_KINDS,
    apply_update,
    check_name,
    destination_from_json,
    destination_to_json,
    kind_of,
    validate_destination,
)
from ..core.records import CHANGE_AFTER_INDEX, Content
from ..core.reserved import DESTINATION_ACTION_PREFIX, DESTINATION_RESOURCE_TYPE
from ..errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from .append import AppendResult, LogAppender
from .config_changes import Actor, append_change, change_event, check_revision

_SELECT = "SELECT destination::text AS destination FROM destinations WHERE tenant = $1 AND name = $2"
_UPSERT = """
INSERT INTO destinations (tenant, name, revision, kind, destination, last_position)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (tenant, name) DO UPDATE SET revision = excluded.revision, destination = excluded.destination,
                                         last_position = excluded.last_position
"""
_LIST = """
SELECT destination::text AS destination FROM destinations WHERE tenant = $1 AND name > $2 ORDER BY name LIMIT $3
"""
_SET_SECRETS = """
INSERT INTO destination_secrets (tenant, name, secret, headers) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (tenant, name) DO UPDATE SET secret = excluded.secret, headers = excluded.headers
"""
_SECRETS = "SELECT secret, headers::text AS headers FROM destination_secrets WHERE tenant = $1 AND name = $2"
_START_STATE = """
INSERT INTO destination_state (tenant, name, checkpoint, generation)
VALUES ($1, $2, $3, pg_current_xact_id()::text::bigint)
ON CONFLICT (tenant, name) DO UPDATE SET checkpoint = excluded.checkpoint,
    generation = excluded.generation, consecutive_failures = 0, last_error = ''
"""
"""Starts (creation) or restarts (replay) a subscription with a generation no earlier one of the same name had:
the id of the transaction, unique for the life of the database, so a delivery that finishes late never moves the
checkpoint of a replayed subscription, nor that of a destination deleted and created again meanwhile (a counter
from 1 would repeat)."""
_RULES_NAMING = """
SELECT id::text AS id FROM alert_rules WHERE tenant = $1 AND rule->'destinations' ? $2 ORDER BY id LIMIT 5
"""
_REBUILD = """
INSERT INTO destinations (tenant, name, revision, kind, destination, last_position)
SELECT tenant, resource_id, (state->>'revision')::bigint,
       (SELECT k FROM unnest(ARRAY['webhook', 'http', 'splunk_hec', 'syslog']) AS k WHERE state ? k LIMIT 1),
       state, last_position
FROM audit_resource_heads
WHERE resource_type = $1 AND state IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class DestinationChange:
    """What a change stored: the destination after it (before it, for a deletion) and the append."""

    destination: pb.Destination
    append: AppendResult


async def with_secrets(conn: asyncpg.Connection, destination: pb.Destination) -> pb.Destination:
    """The destination with its secret and real header values (from destination_secrets), for the store's own
    changes and for delivery; never for a response."""
    full = pb.Destination()
    full.CopyFrom(destination)
    row = await conn.fetchrow(_SECRETS, destination.tenant, destination.name)
    if row is not None:
        full.secret = row["secret"]
        full.headers.clear()
        full.headers.update(orjson.loads(row["headers"]))
    return full


async def _write_secrets(conn: asyncpg.Connection, destination: pb.Destination) -> None:
    await conn.execute(
        _SET_SECRETS,
        destination.tenant,
        destination.name,
        destination.secret,
        orjson.dumps(dict(destination.headers)).decode(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _event(verb: str, destination: pb.Destination, actor: Actor, before: dict | None, after: dict | None) -> Content:
    return change_event(
        action=DESTINATION_ACTION_PREFIX + verb,
        resource_type=DESTINATION_RESOURCE_TYPE,
        tenant=destination.tenant,
        resource_id=destination.name,
        name=destination.name,
        actor=actor,
        before=before,
        after=after,
        message=f"destination {destination.name!r} {verb}{'d' if verb.endswith('e') else 'ed'}",
    )


async def _stored(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, name: str, *, lock: bool) -> pb.Destination:
    row = await conn.fetchrow(_SELECT + (" FOR UPDATE" if lock else ""), tenant, name)
    if row is None:  # also another tenant's: its existence is not disclosed
        raise NotFoundError(f"destination {name!r} not found")
    return destination_from_json(orjson.loads(row["destination"]))


async def _write(conn: asyncpg.Connection, destination: pb.Destination, content: Content, result: AppendResult) -> None:
    """Writes the destination's row with the state the log holds (the event's change.after, as stored)."""
    state = orjson.dumps(content[CHANGE_AFTER_INDEX]).decode()
    await conn.execute(
        _UPSERT,
        destination.tenant,
        destination.name,
        destination.revision,
        kind_of(destination),
        state,
        result.last_position,
    )


async def head_of(conn: asyncpg.Connection, kind: str, tenant: str) -> int:
    """Where a new subscription of this kind starts: the log's head, or the tenant's latest alert."""
    if kind in ALERT_KINDS:
        return await conn.fetchval("SELECT coalesce(max(seq), 0) FROM alerts WHERE tenant = $1", tenant)
    return await conn.fetchval("SELECT last_position FROM audit_log_head")


async def create_destination(
    conn: asyncpg.Connection, appender: LogAppender, destination: pb.Destination, actor: Actor, new_secret: str
) -> DestinationChange:
    """Stores a new destination of destination.tenant (checked by the caller) and its creation event.

    Args:
        new_secret: the secret to use when the request has none and the kind signs its requests.
    """
    created = pb.Destination()
    created.CopyFrom(destination)
    created.ClearField("has_secret")
    created.paused = False
    created.revision = 1
    kind = validate_destination(created)
    if not created.secret:
        if kind in SIGNED_KINDS:
            created.secret = new_secret
        elif kind == "splunk_hec":
            raise InvalidArgumentError("destination.secret", "the HEC token is required")
    now = _now()
    created.create_time.FromDatetime(now)
    created.update_time.FromDatetime(now)
    content = _event("create", created, actor, None, destination_to_json(created))
    async with conn.transaction():
        if await conn.fetchval(_SELECT, created.tenant, created.name) is not None:
            raise AlreadyExistsError(f"destination {created.name!r} already exists")
        result = await append_change(conn, appender, content)
        await _write(conn, created, content, result)
        await _write_secrets(conn, created)
        await conn.execute(_START_STATE, created.tenant, created.name, await head_of(conn, kind, created.tenant))
    return DestinationChange(_public(created), result)


def _public(destination: pb.Destination) -> pb.Destination:
    """The destination as calls return it: has_secret set, the secret itself never."""
    return destination_from_json(destination_to_json(destination))


async def get_destination(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, name: str) -> pb.Destination:
    """The tenant's destination (NotFoundError when it has none with this name)."""
    return await _stored(conn, tenant, check_name(name, "name"), lock=False)


async def list_destinations(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, after_name: str, limit: int
) -> list[pb.Destination]:
    """Up to `limit` destinations of the tenant named after `after_name`, in name order."""
    rows = await conn.fetch(_LIST, tenant, after_name, limit)
    return [destination_from_json(orjson.loads(row["destination"])) for row in rows]


def _check_revision(current: pb.Destination, expected: int, field: str) -> None:
    check_revision(f"destination {current.name!r}", current.revision, expected, field)


async def _change(
    conn: asyncpg.Connection,
    appender: LogAppender,
    verb: str,
    current: pb.Destination,
    updated: pb.Destination,
    actor: Actor,
) -> DestinationChange:
    updated.revision = current.revision + 1
    updated.update_time.FromDatetime(_now())
    content = _event(verb, updated, actor, destination_to_json(current), destination_to_json(updated))
    result = await append_change(conn, appender, content)
    await _write(conn, updated, content, result)
    return DestinationChange(_public(updated), result)


async def update_destination(
    conn: asyncpg.Connection,
    appender: LogAppender,
    tenant: str,
    change: pb.Destination,
    paths: list[str],
    actor: Actor,
    *,
    check: Callable[[pb.Destination], Awaitable[None]] | None = None,
) -> DestinationChange:
    """Applies the fields of `change` named by `paths` to the tenant's destination change.name, at
    change.revision when it is not 0 (AbortedError otherwise), and records the update (without the secret).

    Args:
        check: what else the updated destination must pass (the API's address check), before it is stored.
    """
    name = check_name(change.name, "destination.name")
    async with conn.transaction():
        current = await with_secrets(conn, await _stored(conn, tenant, name, lock=True))
        _check_revision(current, change.revision, "destination.revision")
        updated = apply_update(current, change, paths)
        updated.tenant = tenant
        validate_destination(updated)
        if check is not None:
            await check(updated)
        if "secret" in paths and not updated.secret:
            raise InvalidArgumentError("destination.secret", "is required when update_mask names it")
        await _write_secrets(conn, updated)
        return await _change(conn, appender, "update", current, updated, actor)


async def set_paused(
    conn: asyncpg.Connection, appender: LogAppender, tenant: str, name: str, paused: bool, actor: Actor
) -> DestinationChange:
    """Pauses or resumes the tenant's destination, recorded as audit.destination.pause or .resume."""
    name = check_name(name, "name")
    async with conn.transaction():
        current = await _stored(conn, tenant, name, lock=True)
        updated = pb.Destination()
        updated.CopyFrom(current)
        updated.paused = paused
        return await _change(conn, appender, "pause" if paused else "resume", current, updated, actor)


async def delete_destination(
    conn: asyncpg.Connection, appender: LogAppender, tenant: str, name: str, revision: int, actor: Actor
) -> DestinationChange:
    """Deletes the tenant's destination (at `revision` when it is not 0) unless a rule names it."""
    name = check_name(name, "name")
    async with conn.transaction():
        current = await _stored(conn, tenant, name, lock=True)
        _check_revision(current, revision, "revision")
        rules = [row["id"] for row in await conn.fetch(_RULES_NAMING, tenant, name)]
        if rules:
            raise FailedPreconditionError(
                f"destination {name!r} is named by alert rules {', '.join(rules)}: remove it from them first"
            )
        content = _event("delete", current, actor, destination_to_json(current), None)
        result = await append_change(conn, appender, content)
        for table in ("destinations", "destination_secrets", "destination_state"):
            await conn.execute(f"DELETE FROM {table} WHERE tenant = $1 AND name = $2", tenant, name)
        # Its attempts go with it: a destination created later under the same name starts with none.
        await conn.execute("DELETE FROM delivery_attempts WHERE tenant = $1 AND destination = $2", tenant, name)
    return DestinationChange(current, result)


async def replay_destination(
    conn: asyncpg.Connection,
    appender: LogAppender,
    tenant: str,
    name: str,
    *,
    after_position: int | None,
    since: dt.datetime | None,
    actor: Actor,
) -> int:
    """Moves the destination's checkpoint to `after_position`, or to just before what was recorded (events) or
    stored (alerts) at `since`; records audit.destination.replay; returns the new checkpoint."""
    name = check_name(name, "name")
    async with conn.transaction():
        current = await _stored(conn, tenant, name, lock=True)
        kind = kind_of(current)
        head = await head_of(conn, kind, tenant)
        if after_position is not None:
            if not 0 <= after_position <= head:
                raise InvalidArgumentError(
                    "after_position", f"must be from 0 to the head ({head}), got {after_position}"
                )
            checkpoint = after_position
        elif kind in ALERT_KINDS:
            checkpoint = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) FROM alerts WHERE tenant = $1 AND created_at < $2", tenant, since
            )
        else:
            checkpoint = await conn.fetchval(
                "SELECT coalesce(max(position), 0) FROM audit_events WHERE recorded_at < $1", since
            )
        await conn.execute(_START_STATE, tenant, name, checkpoint)
        unit = "alert" if kind in ALERT_KINDS else "position"
        content = change_event(
            action=DESTINATION_ACTION_PREFIX + "replay",
            resource_type=DESTINATION_RESOURCE_TYPE,
            tenant=tenant,
            resource_id=name,
            name=name,
            actor=actor,
            before=None,
            after=None,  # the destination's state is unchanged: the replay moved its subscription
            message=f"destination {name!r} replayed after {unit} {checkpoint}",
            metadata={"checkpoint": checkpoint, "kind": kind},
        )
        await append_change(conn, appender, content)
    return checkpoint


async def missing_webhook_destinations(
    conn: asyncpg.Connection, tenant: str, names: list[str]
) -> list[tuple[int, str]]:
    """(index, name) of the names that are not webhook destinations of the tenant; the others are locked (FOR
    SHARE) until the caller's transaction ends, so none is deleted before the rule naming it is stored."""
    rows = await conn.fetch(
        "SELECT name FROM destinations WHERE tenant = $1 AND name = ANY($2::text[]) AND kind = 'webhook' FOR SHARE",
        tenant,
        names,
    )
    present = {row["name"] for row in rows}
    return [(index, name) for index, name in enumerate(names) if name not in present]


async def rebuild_destinations(conn: asyncpg.Connection) -> int:
    """Replaces the destinations read model with the states of their resource streams (audit_resource_heads);
    secrets and subscription states are kept. Returns the rows."""
    async with conn.transaction():
        await conn.execute("DELETE FROM destinations")
        await conn.execute(_REBUILD, DESTINATION_RESOURCE_TYPE)
        return await conn.fetchval("SELECT count(*) FROM destinations")
