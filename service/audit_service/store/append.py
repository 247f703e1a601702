"""The append transaction: de-duplicate, assign positions in commit order, advance the resource streams (and
fill change.before from them), extend the hash chains, COPY, and add the batch to the projections.

Every append locks the single audit_log_head row first and holds it until COMMIT, so appends are
serialized: positions are gapless, and position order is commit order (a reader that has seen position P
and later asks for `position > P` cannot miss an event committed afterwards). The lock is taken by its own
statement: later statements then run with a snapshot that includes every append committed before it.

What runs under that lock is the ceiling of the whole log (README, "Scaling"), so it is kept to what needs the
previous position and hash, in six statements: BEGIN and the lock (one round trip); one read (stored ids, chain
heads, stream heads); the COPY of the events; the COPY of their ids; one statement moving the heads and adding
the counts; and COMMIT. Events arrive presealed (core/records.preseal: their canonical bytes and rows written
ahead), and their counts are counted before the transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
import orjson

from ..core.counts import hourly_counts
from ..core.duplicates import conflicting_fields
from ..core.masking import DEFAULT_MASK, SecretMask
from ..core.records import (
    CONTENT_COLUMNS,
    GENESIS_HASH,
    STORED_COLUMNS,
    Content,
    Presealed,
    columns_sql,
    content_from_row,
    datetime_to_micros,
    micros_to_datetime,
    normalize_json,
    preseal,
    seal_presealed,
)
from ..core.streams import StreamHead, StreamKey, advance, stream_key
from ..errors import UnavailableError

log = logging.getLogger(__name__)

# The transaction and the head's lock in one round trip (the simple query protocol runs both); the lock is taken
# by a statement of its own, so the statements after it see every append committed before it.
_LOCK_HEAD = "SELECT FROM audit_log_head FOR UPDATE"
_BEGIN_AND_LOCK_HEAD = f"BEGIN; {_LOCK_HEAD}"
# Read once the head is locked, in one round trip: which ids are stored already, the tenants' chain heads, and
# the heads of the batch's streams, each by one primary-key probe (LATERAL ... LIMIT 1: joined plainly, the
# planner hashed the whole heads table for every batch, a cost growing with every stream ever written).
_READ_UNDER_LOCK = """
WITH stream_heads AS (
    SELECT k.key_index, h.revision, h.last_position, h.state::text AS state
    FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY
        AS k (tenant, resource_type, resource_id, key_index)
    CROSS JOIN LATERAL (
        SELECT h.revision, h.last_position, h.state
        FROM audit_resource_heads AS h
        WHERE h.tenant = k.tenant AND h.resource_type = k.resource_type AND h.resource_id = k.resource_id
        LIMIT 1
    ) AS h
)
SELECT
    (SELECT last_position FROM audit_log_head) AS last_position,
    (SELECT greatest(coalesce($6::timestamptz, clock_timestamp()), last_recorded_at) FROM audit_log_head)
        AS recorded_at,
    (SELECT coalesce(array_agg(event_id::text), '{}') FROM audit_event_ids WHERE event_id = ANY($1::uuid[]))
        AS existing_ids,
    (SELECT coalesce(array_agg(tenant ORDER BY tenant), '{}') FROM audit_chain_heads WHERE tenant = ANY($2::text[]))
        AS head_tenants,
    (SELECT coalesce(array_agg(last_hash ORDER BY tenant), '{}') FROM audit_chain_heads
        WHERE tenant = ANY($2::text[])) AS head_hashes,
    (SELECT coalesce(array_agg(key_index ORDER BY key_index), '{}') FROM stream_heads) AS stream_indexes,
    (SELECT coalesce(array_agg(revision ORDER BY key_index), '{}') FROM stream_heads) AS stream_revisions,
    (SELECT coalesce(array_agg(last_position ORDER BY key_index), '{}') FROM stream_heads) AS stream_positions,
    (SELECT coalesce(array_agg(state ORDER BY key_index), '{}') FROM stream_heads) AS stream_states
"""
# Shared with the rebuild (store/projections.py): a (tenant, hour) row from per-action counts, and the merge.
RANKED_ACTION_COUNTS = """
tenant, hour, sum(events),
array_agg(action ORDER BY events DESC, action COLLATE "C"),
array_agg(events ORDER BY events DESC, action COLLATE "C")
"""
ADD_TO_ACTION_COUNTS = """
ON CONFLICT (tenant, hour) DO UPDATE
SET events = p.events + excluded.events,
    (actions, counts) = (SELECT * FROM audit_add_action_counts(p.actions, p.counts, excluded.actions, excluded.counts))
"""
# After the events and their ids are stored (the head's trigger checks them), in one round trip: the log head,
# the tenants' chain heads, the streams' heads and both count projections (the per-action one summed from the
# fine one's rows, so the batch's counts are sent once).
_MOVE_HEADS_AND_COUNT = f"""
WITH log_head AS (
    UPDATE audit_log_head SET last_position = $1, last_recorded_at = $2
), chain_heads AS (
    INSERT INTO audit_chain_heads (tenant, last_position, last_hash)
    SELECT * FROM unnest($3::text[], $4::bigint[], $5::bytea[])
    ON CONFLICT (tenant) DO UPDATE SET last_position = excluded.last_position, last_hash = excluded.last_hash
), stream_heads AS (
    INSERT INTO audit_resource_heads (tenant, resource_type, resource_id, revision, last_position, state)
    SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::jsonb[])
    ON CONFLICT (tenant, resource_type, resource_id) DO UPDATE
    SET revision = excluded.revision, last_position = excluded.last_position, state = excluded.state
), counts AS (
    INSERT INTO audit_counts_hourly (tenant, hour, action, resource_type, outcome, actor_type, events)
    SELECT * FROM unnest(
        $12::text[], $13::timestamptz[], $14::text[], $15::text[], $16::smallint[], $17::smallint[], $18::bigint[]
    )
    ON CONFLICT ON CONSTRAINT audit_counts_hourly_key DO UPDATE
    SET events = audit_counts_hourly.events + excluded.events
)
INSERT INTO audit_action_counts_hourly AS p (tenant, hour, events, actions, counts)
SELECT {RANKED_ACTION_COUNTS}
FROM (
    SELECT tenant, hour, action, sum(events)::bigint
    FROM unnest($12::text[], $13::timestamptz[], $14::text[], $18::bigint[]) AS fine (tenant, hour, action, events)
    GROUP BY tenant, hour, action
) AS per_action (tenant, hour, action, events)
GROUP BY tenant, hour
{ADD_TO_ACTION_COUNTS}
"""
_READ_STORED = f"""
SELECT e.position, {columns_sql("e.", CONTENT_COLUMNS)}
FROM audit_event_ids AS i
JOIN audit_events AS e ON e.position = i.position AND e.recorded_at = i.recorded_at
WHERE i.event_id = ANY($1::uuid[])
"""
_DATABASE_NOW = "SELECT greatest(clock_timestamp(), last_recorded_at) FROM audit_log_head"
_ID_COLUMNS = ("event_id", "position", "recorded_at")
_NO_PARTITION = "no partition of relation"


class SealedEvent(NamedTuple):
    """A stored event as the commit announcement carries it: its canonical bytes and its chain hashes (a named
    tuple: the append makes one per event, in its serialized section)."""

    tenant: str
    canonical: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class Conflict:
    """An event sent under the id of a stored event, with different content: not stored, to be dead-lettered."""

    index: int
    """Its index in the appended contents."""
    event_id: str
    stored_position: int
    """Where the event with this id is stored."""
    fields: tuple[str, ...]
    """The columns in which the two differ."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one append stored."""

    prev_position: int
    """The log's last position before this append."""
    last_position: int
    """The log's last position after it (equal to prev_position when nothing new was stored)."""
    duplicates: int
    """Events of the batch that were already stored (or repeated within the batch)."""
    sealed: tuple[SealedEvent, ...] = ()
    """What the commit announcement carries of each stored event, in position order."""
    conflicts: tuple[Conflict, ...] = ()
    """Events of the batch whose id was already stored (or came earlier in the batch) with other content."""

    @property
    def appended(self) -> int:
        return self.last_position - self.prev_position


def _unnest_arguments(counts: Mapping[tuple, int]) -> list[list]:
    """One array per key column, then the counts, for INSERT ... SELECT FROM unnest(...); every key holds
    (tenant, hour in µs, ...) and the hour goes as a timestamp."""
    keys = list(counts)
    columns = [list(column) for column in zip(*keys, strict=True)]
    hours = {hour: micros_to_datetime(hour) for hour in set(columns[1])}  # a batch spans few hours
    columns[1] = [hours[hour] for hour in columns[1]]
    return [*columns, [counts[key] for key in keys]]


def _month_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class LogAppender:
    """Appends batches of validated events to the log. One per process; safe to share between tasks."""

    def __init__(self, mask: SecretMask | None = None) -> None:
        """
        Args:
            mask: applied to a resource's previous state before it fills an event's change.before, so a state
                stored before masking existed (or under a narrower AUDIT_SECRET_KEYS) is never copied in clear
                into a new event. Events arrive masked already (core/decode.py).
        """
        self._ensured_months: set[dt.datetime] = set()
        self._mask = mask or DEFAULT_MASK

    async def ensure_partitions(self, conn: asyncpg.Connection, moment: dt.datetime) -> None:
        """Makes sure the monthly partitions for `moment` and one day later exist (cached)."""
        for at in (moment, moment + dt.timedelta(days=1)):
            month = _month_start(at)
            if month not in self._ensured_months:
                name = await conn.fetchval("SELECT audit_ensure_partition($1)", at)
                log.debug("partition %s is in place", name)
                self._ensured_months.add(month)

    async def append(
        self,
        conn: asyncpg.Connection,
        contents: Sequence[Content],
        *,
        recorded_at: dt.datetime | None = None,
        presealed: Sequence[Presealed] | None = None,
    ) -> AppendResult:
        """Stores the events not stored yet, in one transaction, in the given order.

        Args:
            conn: a connection of the service role.
            contents: canonical contents of validated events (core.decode / core.records).
            recorded_at: the time to record instead of the database's clock, for importing history (and tests
                that need a log spanning months). Never before the log's last recorded_at: it is raised to it.
            presealed: preseal(content) of each of `contents`, when the caller prepared them ahead (the ingest
                worker does, while the previous batch is being stored); otherwise they are prepared here.

        Idempotent on event_id: events already in the log (whenever they were stored) and repeats within
        the batch are skipped and counted as duplicates, when they are the same event; one with other content
        under a stored id is skipped and returned as a conflict (checked after COMMIT, outside the serialized
        section, and only when there are duplicates).
        """
        if presealed is None:
            presealed = [preseal(content) for content in contents]
        batch: dict[str, Presealed] = {}
        repeated: list[int] = []
        for index, prepared in enumerate(presealed):
            if batch.setdefault(prepared.content[0], prepared) is not prepared:
                repeated.append(index)
        # Counted here, outside the serialized section, as if every event were new (recounted in the rare batch
        # holding events already stored).
        counts = hourly_counts(prepared.content for prepared in batch.values())
        await self.ensure_partitions(conn, recorded_at or dt.datetime.now(dt.UTC))
        try:
            result, existing = await self._append_once(conn, batch, counts, recorded_at)
        except asyncpg.CheckViolationError as error:
            if _NO_PARTITION not in str(error):
                raise
            # recorded_at (the database's clock, never going back) is in a month without a partition, e.g.
            # because this worker's clock lags the database's: create it for the database's own time.
            self._ensured_months.clear()
            database_now = await conn.fetchval(_DATABASE_NOW)
            await self.ensure_partitions(conn, database_now)
            try:
                result, existing = await self._append_once(conn, batch, counts, recorded_at)
            except asyncpg.CheckViolationError as again:
                if _NO_PARTITION not in str(again):
                    raise
                # Not the events' fault: keep them and let the caller retry.
                raise UnavailableError(f"no partition for recorded_at {database_now.isoformat()}") from again
        conflicts: tuple[Conflict, ...] = ()
        if existing or repeated:
            first_seen = {content[0]: index for index, content in reversed(list(enumerate(contents)))}
            suspects = sorted({*repeated, *(first_seen[event_id] for event_id in existing)})
            conflicts = await _conflicts(conn, contents, suspects)
        return dataclasses.replace(
            result, duplicates=len(contents) - result.appended - len(conflicts), conflicts=conflicts
        )

    async def _append_once(
        self,
        conn: asyncpg.Connection,
        batch: dict[str, Presealed],
        counts: Mapping[tuple, int],
        recorded_at_override: dt.datetime | None,
    ) -> tuple[AppendResult, set[str]]:
        """The append transaction; also returns the ids of the batch that were already stored."""
        stream_keys = sorted({key for prepared in batch.values() if (key := stream_key(prepared.content))})
        tenants = sorted({prepared.content[1] for prepared in batch.values()})
        read_arguments = (list(batch), tenants, *_columns(stream_keys, 3), recorded_at_override)
        if conn.is_in_transaction():  # the caller's (retention, configuration changes): a savepoint of it
            async with conn.transaction():
                await conn.execute(_LOCK_HEAD)
                return await self._store(conn, batch, stream_keys, read_arguments, counts)
        try:
            await conn.execute(_BEGIN_AND_LOCK_HEAD)
            stored = await self._store(conn, batch, stream_keys, read_arguments, counts)
            await conn.execute("COMMIT")
        except BaseException:
            await _roll_back(conn)
            raise
        return stored

    async def _store(
        self,
        conn: asyncpg.Connection,
        batch: dict[str, Presealed],
        stream_keys: list[StreamKey],
        read_arguments: tuple,
        counts: Mapping[tuple, int],
    ) -> tuple[AppendResult, set[str]]:
        """The statements of the append transaction, the head locked."""
        known = await conn.fetchrow(_READ_UNDER_LOCK, *read_arguments)
        prev_position: int = known["last_position"]
        recorded_at: dt.datetime = known["recorded_at"]
        recorded_at_micros = datetime_to_micros(recorded_at)
        existing = set(known["existing_ids"])
        chain_heads: dict[str, bytes] = dict(zip(known["head_tenants"], known["head_hashes"], strict=True))
        stream_heads = _stream_heads(stream_keys, known)
        moved_streams: set[StreamKey] = set()

        rows = []
        sealed = []
        id_rows = []
        appended: list[Content] = []
        tenant_last_position: dict[str, int] = {}
        position = prev_position
        for event_id, prepared in batch.items():
            if event_id in existing:
                continue
            position += 1
            content = prepared.content
            tenant = content[1]
            revision = None
            if (key := stream_key(content)) is not None:
                content, head = advance(stream_heads.get(key), content, position, self._mask)
                stream_heads[key] = head
                moved_streams.add(key)
                revision = head.revision
                if content is not prepared.content:  # change.before filled from the stream's state
                    prepared = preseal(content)
            prev_hash = chain_heads.get(tenant, GENESIS_HASH)
            canonical, digest, row = seal_presealed(
                position, recorded_at, recorded_at_micros, prepared, prev_hash, revision
            )
            sealed.append(SealedEvent(tenant, canonical, prev_hash, digest))
            chain_heads[tenant] = digest
            tenant_last_position[tenant] = position
            rows.append(row)
            id_rows.append((event_id, position, recorded_at))
            if existing:
                appended.append(content)
        if not rows:
            return AppendResult(prev_position, prev_position, 0), existing
        if existing:
            counts = hourly_counts(appended)

        await conn.copy_records_to_table("audit_events", records=rows, columns=STORED_COLUMNS)
        await conn.copy_records_to_table("audit_event_ids", records=id_rows, columns=_ID_COLUMNS)
        moved = sorted(tenant_last_position)
        streams = sorted(moved_streams)
        stream_states = [stream_heads[key] for key in streams]
        await conn.execute(
            _MOVE_HEADS_AND_COUNT,
            position,
            recorded_at,
            moved,
            [tenant_last_position[tenant] for tenant in moved],
            [chain_heads[tenant] for tenant in moved],
            *_columns(streams, 3),
            [head.revision for head in stream_states],
            [head.last_position for head in stream_states],
            [None if head.state is None else orjson.dumps(head.state).decode() for head in stream_states],
            *_unnest_arguments(counts),
        )
        return AppendResult(prev_position, position, 0, tuple(sealed)), existing


async def _roll_back(conn: asyncpg.Connection) -> None:
    """Ends a failed append's transaction, so that its connection goes back to the pool clean (one that broke is
    discarded by the pool). Never raises: the append's own error is the one to report. A session that ended has
    had its pooled connection taken back by the pool already, which then answers even is_closed() with an
    InterfaceError ("released back to the pool") that would hide why the append failed."""
    with contextlib.suppress(Exception):
        if not conn.is_closed() and conn.is_in_transaction():
            await conn.execute("ROLLBACK")


async def _conflicts(
    conn: asyncpg.Connection, contents: Sequence[Content], suspects: Sequence[int]
) -> tuple[Conflict, ...]:
    """Which of the events at `suspects` (their ids were stored already, or came earlier in the batch) differ
    from the stored event with their id. An id whose event was archived and dropped by retention cannot be
    compared: it counts as a duplicate."""
    rows = await conn.fetch(_READ_STORED, sorted({contents[index][0] for index in suspects}))
    stored = {str(row["event_id"]): row for row in rows}
    found = []
    for index in suspects:
        row = stored.get(contents[index][0])
        if row is None:
            continue
        fields = conflicting_fields(contents[index], content_from_row(row))
        if fields:
            found.append(Conflict(index, contents[index][0], row["position"], fields))
    if found:
        log.warning("%d events differ from the stored events with their ids", len(found))
    return tuple(found)


def _columns(rows: Sequence[tuple], width: int) -> list[list]:
    """One list per column of `rows` (for unnest), `width` columns."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _stream_heads(keys: Sequence[StreamKey], known: asyncpg.Record) -> dict[StreamKey, StreamHead]:
    """The heads of the streams that have one, from _READ_UNDER_LOCK's arrays (1-based indexes into `keys`)."""
    return {
        keys[index - 1]: StreamHead(
            revision, last_position, None if state is None else normalize_json(orjson.loads(state))
        )
        for index, revision, last_position, state in zip(
            known["stream_indexes"],
            known["stream_revisions"],
            known["stream_positions"],
            known["stream_states"],
            strict=True,
        )
    }
