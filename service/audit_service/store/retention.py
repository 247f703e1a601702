"""Retention: `audit-service retention` archives the monthly partitions of the log that ended longer ago than
the retention period, then drops them whole (never row by row).

For each expired partition, oldest first:
0. its events are verified in the log (store/verify.verify_log over its positions, against the stored signed
   checkpoints with the configured keys): a partition whose history was rewritten is refused, not archived;
1. its events are streamed in position order into `<archive_dir>/<partition>.ndjson.gz` (the NDJSON of
   core/ndjson.py, gzip with a fixed header, so rewriting it after a crash gives the same bytes);
2. `<partition>.manifest.json` records the range, counts, positions and, per tenant, the chain hashes at both
   boundaries, the archive's SHA-256 and size; signed with the checkpoint key when one is configured;
3. both are read back and verified offline (offline_verify.py) before anything is dropped;
4. one transaction, holding the log head: each tenant's chain in the manifest must start where the archives
   before it left it (the anchor the manifests in audit_archives state, or the genesis hash); the partition's
   resource streams are folded into audit_resource_baseline, its events leave the count projections, each
   tenant's chain is anchored at its last archived event (audit_chain_anchors), the manifest goes into
   audit_archives, the purge is recorded in the log as an event of the system actor, one per tenant, and last
   the partition is detached and dropped. Detaching needs an ACCESS EXCLUSIVE lock on audit_events, so the
   transaction gives up after LOCK_TIMEOUT_SECONDS (a long-running reader holds the log; rerun later) rather
   than make every reader and writer queue behind it, and does next to nothing once it holds that lock.

Runs as the schema owner (the service role cannot drop). A rerun after a crash is safe: until step 4 commits
the partition is still there and its archive is rewritten; after, it is gone and not looked at again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from audit.v1 import event_pb2
from audit_client import new_event_id
from audit_client.validation import validate_event
from opentelemetry import trace

from ..core.ndjson import event_line
from ..core.records import GENESIS_HASH, Content, columns_sql, content_from_event
from ..core.signing import Signer, Verifier, load_signer
from ..offline_verify import ARCHIVE_SUFFIX, MANIFEST_FORMAT, MANIFEST_SUFFIX, manifest_signing_bytes, verify_archive
from ..telemetry import metrics
from .append import RANKED_ACTION_COUNTS, LogAppender
from .checkpoints import checkpoint_verifiers
from .projections import HOUR_OF_EVENT, fold_streams
from .verify import archived_chains, verify_log

tracer = trace.get_tracer("audit_service.store.retention")

PURGE_ACTION = "audit.retention.purge"
LOCK_TIMEOUT_SECONDS = 10.0
"""How long the dropping transaction waits for a lock (detaching a partition locks the whole log) before it
gives up, nothing dropped."""
SYSTEM_ACTOR = event_pb2.Subject(id="audit-service", type=event_pb2.SUBJECT_TYPE_SYSTEM, slug="retention")
_PARTITION_NAME = re.compile(r"audit_events_(\d{4})_(\d{2})")

_LIST_PARTITIONS = """
SELECT c.relname::text AS name
FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'audit_events'::regclass
"""
_LOCK_HEAD = "SELECT last_position FROM audit_log_head FOR UPDATE"
_UPSERT_ANCHORS = """
INSERT INTO audit_chain_anchors (tenant, position, hash)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
ON CONFLICT (tenant) DO UPDATE SET position = excluded.position, hash = excluded.hash
"""
# The (tenant, hour) keys of the count projections whose rows count events of the partition: they are
# deleted and recounted from the log once the partition is detached from it.
_TOUCHED_HOURS = "SELECT DISTINCT tenant, {hours} AS hour FROM {partition}"
_FORGET_COUNTS = """
DELETE FROM {table} AS p USING unnest($1::text[], $2::timestamptz[]) AS k (tenant, hour)
WHERE p.tenant = k.tenant AND p.hour = k.hour
"""
# The events of those hours outside the partition ($3): what the log holds once it is dropped.
_EVENTS_OF_HOURS = """
unnest($1::text[], $2::timestamptz[]) AS k (tenant, hour)
JOIN audit_events AS e ON e.tenant = k.tenant AND e.occurred_at >= k.hour AND e.occurred_at < k.hour + interval '1 hour'
    AND e.tableoid <> $3::regclass
"""
_RECOUNT = f"""
INSERT INTO audit_counts_hourly (tenant, hour, action, resource_type, outcome, actor_type, events)
SELECT e.tenant, k.hour, e.action, e.resource_type, e.outcome, e.actor_type, count(*)
FROM {_EVENTS_OF_HOURS}
GROUP BY 1, 2, 3, 4, 5, 6
"""
_RECOUNT_ACTIONS = f"""
INSERT INTO audit_action_counts_hourly (tenant, hour, events, actions, counts)
SELECT {RANKED_ACTION_COUNTS}
FROM (
    SELECT e.tenant, k.hour, e.action, count(*) AS events
    FROM {_EVENTS_OF_HOURS}
    GROUP BY 1, 2, 3
) AS per_action
GROUP BY tenant, hour
"""
_RECORD_ARCHIVE = """
INSERT INTO audit_archives (
    partition_name, range_start, range_end, first_position, last_position, events, archive_file, archive_sha256,
    manifest
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
"""


class RetentionError(RuntimeError):
    """Retention could not archive or drop a partition; nothing of that partition was dropped."""


@dataclass(frozen=True, slots=True)
class Partition:
    """A monthly partition of audit_events (named and bounded by audit_ensure_partition)."""

    name: str
    range_start: dt.datetime
    range_end: dt.datetime

    @classmethod
    def from_name(cls, name: str) -> Partition | None:
        match = _PARTITION_NAME.fullmatch(name)
        if match is None:
            return None
        year, month = int(match[1]), int(match[2])
        start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
        end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
        return cls(name, start, end)

    @property
    def range_text(self) -> str:
        return f"{self.range_start:%Y-%m-%d}..{self.range_end:%Y-%m-%d}"


@dataclass(frozen=True, slots=True)
class Archived:
    """One partition archived and dropped."""

    partition: Partition
    events: int
    first_position: int | None
    last_position: int | None
    tenants: int
    archive: Path | None

    def __str__(self) -> str:
        if self.events == 0:
            return f"dropped {self.partition.name} ({self.partition.range_text}): it held no events"
        return (
            f"archived {self.partition.name} ({self.partition.range_text}): {self.events} events at positions "
            f"{self.first_position}-{self.last_position} of {self.tenants} tenants to {self.archive}; partition "
            f"dropped, purge recorded"
        )


async def expired_partitions(conn: asyncpg.Connection, days: int) -> list[Partition]:
    """The partitions whose upper bound is at least `days` days ago (by the database's clock), oldest first."""
    cutoff: dt.datetime = await conn.fetchval("SELECT now() - make_interval(days => $1)", days)
    partitions = [Partition.from_name(row["name"]) for row in await conn.fetch(_LIST_PARTITIONS)]
    expired = [partition for partition in partitions if partition is not None and partition.range_end <= cutoff]
    return sorted(expired, key=lambda partition: partition.range_start)


@dataclass(slots=True)
class _TenantRange:
    events: int
    first_position: int
    first_prev_hash: bytes
    last_position: int
    last_hash: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "first_position": self.first_position,
            "first_prev_hash": self.first_prev_hash.hex(),
            "last_position": self.last_position,
            "last_hash": self.last_hash.hex(),
        }


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


async def _write_archive(
    conn: asyncpg.Connection, partition: Partition, path: Path
) -> tuple[int, dict[str, _TenantRange], tuple[int, int] | None]:
    """Streams the partition's events into a gzip NDJSON file; returns (events, tenant ranges, positions)."""
    tenants: dict[str, _TenantRange] = {}
    events = 0
    first = last = None
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as raw:
        # No file name or time in the gzip header: the same events give the same archive bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as archive:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = conn.cursor(f"SELECT {columns_sql()} FROM {partition.name} ORDER BY position", prefetch=2000)
                async for row in cursor:
                    archive.write(event_line(row))
                    tenant, position, prev_hash, hash_ = (
                        row["tenant"],
                        row["position"],
                        bytes(row["prev_hash"]),
                        bytes(row["hash"]),
                    )
                    if (run := tenants.get(tenant)) is None:
                        tenants[tenant] = _TenantRange(1, position, prev_hash, position, hash_)
                    else:
                        run.events += 1
                        run.last_position = position
                        run.last_hash = hash_
                    events += 1
                    first = position if first is None else first
                    last = position
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)
    return events, tenants, None if first is None else (first, last)


def _build_manifest(
    partition: Partition,
    events: int,
    positions: tuple[int, int],
    tenants: dict[str, _TenantRange],
    archive: Path,
    days: int,
    signer: Signer | None,
) -> dict[str, Any]:
    with archive.open("rb") as file:
        sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "partition": partition.name,
        "range_start": partition.range_start.isoformat().replace("+00:00", "Z"),
        "range_end": partition.range_end.isoformat().replace("+00:00", "Z"),
        "events": events,
        "first_position": positions[0],
        "last_position": positions[1],
        "tenants": {tenant: tenants[tenant].as_json() for tenant in sorted(tenants)},
        "archive_file": archive.name,
        "archive_sha256": sha256,
        "archive_size": archive.stat().st_size,
        "retention_days": days,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }
    if signer is not None:
        manifest["key_id"] = signer.key_id
        manifest["signature"] = signer.sign(manifest_signing_bytes(manifest)).hex()
    return manifest


def _purge_content(partition: Partition, tenant: str, run: dict[str, Any], manifest: dict[str, Any]) -> Content:
    event = event_pb2.AuditEvent(
        event_id=new_event_id(),
        tenant=tenant,
        action=PURGE_ACTION,
        outcome=event_pb2.OUTCOME_SUCCESS,
        actor=SYSTEM_ACTOR,
        resource=event_pb2.Resource(type="audit_partition", id=partition.name),
        message=(
            f"archived and dropped {run['events']} events recorded {partition.range_text} "
            f"(positions {run['first_position']}-{run['last_position']})"
        ),
    )
    event.metadata.update(
        {
            "archive_file": manifest["archive_file"],
            "archive_sha256": manifest["archive_sha256"],
            "events": run["events"],
            "first_position": run["first_position"],
            "last_position": run["last_position"],
            "last_hash": run["last_hash"],
            "partition_events": manifest["events"],
            "range_start": manifest["range_start"],
            "range_end": manifest["range_end"],
            "retention_days": manifest["retention_days"],
        }
    )
    event.occurred_at.GetCurrentTime()
    return content_from_event(event, validate_event(event, now_seconds=time.time()))


async def _verify_in_log(conn: asyncpg.Connection, partition: Partition, verifiers: Sequence[Verifier]) -> None:
    """Step 0: the partition's events must verify in the log, against the signed checkpoints, before they are
    archived (an archive of a rewritten history would verify as well as the real one)."""
    first, last = await conn.fetchrow(f"SELECT min(position), max(position) FROM {partition.name}")
    if first is None:
        return
    report = await verify_log(conn, from_position=first, to_position=last, verifiers=verifiers)
    if not report.ok:
        raise RetentionError(
            f"{partition.name} does not verify in the log, nothing archived or dropped: {report.first_break}"
        )


async def _check_chain_starts(
    conn: asyncpg.Connection, name: str, manifest: dict[str, Any], verifiers: Sequence[Verifier]
) -> None:
    """Each tenant's chain in the manifest must start where the archives before it (audit_archives) end."""
    archived = await archived_chains(conn, verifiers)
    if archived.first_break is not None:
        raise RetentionError(f"the archives before {name} do not verify, nothing dropped: {archived.first_break}")
    for tenant, run in sorted(manifest["tenants"].items()):
        position, digest = archived.anchors.get(tenant, (0, GENESIS_HASH))
        if run["first_prev_hash"] != digest.hex():
            where = f"its last archived event at position {position}" if position else "the genesis hash"
            raise RetentionError(
                f"{name}: tenant {tenant!r}'s first event at position {run['first_position']} does not continue its "
                f"chain from {where}, nothing dropped"
            )


async def _drop_partition(
    conn: asyncpg.Connection,
    partition: Partition,
    manifest: dict[str, Any] | None,
    verifiers: Sequence[Verifier],
    lock_timeout_seconds: float,
) -> bool:
    """The transaction of step 4 (`manifest` None: an empty partition). False when the partition is gone
    already (another run dropped it)."""
    name = partition.name
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout_seconds * 1000))}")
            await conn.execute(_LOCK_HEAD)
            if await conn.fetchval("SELECT to_regclass($1)", name) is None:
                return False
            events, first, last = await conn.fetchrow(f"SELECT count(*), min(position), max(position) FROM {name}")
            expected = (
                (0, None, None)
                if manifest is None
                else tuple(manifest[key] for key in ("events", "first_position", "last_position"))
            )
            if (events, first, last) != expected:
                raise RetentionError(f"{name} changed after it was archived ({events} events now); run retention again")
            if manifest is not None:
                await _record_archive(conn, partition, manifest, verifiers)
            # Last, as it locks the whole log until the commit: the partition leaves it.
            await conn.execute(f"ALTER TABLE audit_events DETACH PARTITION {name}")
            await conn.execute(f"DROP TABLE {name}")
    except asyncpg.LockNotAvailableError:
        raise RetentionError(
            f"{name}: the log stayed locked for {lock_timeout_seconds:g} s (a long-running reader or writer holds "
            "it), nothing dropped; run retention again later"
        ) from None
    return True


async def _record_archive(
    conn: asyncpg.Connection, partition: Partition, manifest: dict[str, Any], verifiers: Sequence[Verifier]
) -> None:
    """Everything of step 4 but the drop, in the caller's transaction: the partition's events still in the log."""
    name = partition.name
    first, last = manifest["first_position"], manifest["last_position"]
    await _check_chain_starts(conn, name, manifest, verifiers)
    touched = await conn.fetch(_TOUCHED_HOURS.format(hours=HOUR_OF_EVENT, partition=name))
    hours_args = ([row["tenant"] for row in touched], [row["hour"] for row in touched], name)
    await fold_streams(conn, source=name, target="audit_resource_baseline", low=first - 1, high=last)
    tenants = sorted(manifest["tenants"])
    await conn.execute(
        _UPSERT_ANCHORS,
        tenants,
        [manifest["tenants"][tenant]["last_position"] for tenant in tenants],
        [bytes.fromhex(manifest["tenants"][tenant]["last_hash"]) for tenant in tenants],
    )
    # Recount the hours the partition touched from the rest of the log.
    for table in ("audit_counts_hourly", "audit_action_counts_hourly"):
        await conn.execute(_FORGET_COUNTS.format(table=table), *hours_args[:2])
    await conn.execute(_RECOUNT, *hours_args)
    await conn.execute(_RECOUNT_ACTIONS, *hours_args)
    await conn.execute(
        _RECORD_ARCHIVE,
        name,
        partition.range_start,
        partition.range_end,
        first,
        last,
        manifest["events"],
        manifest["archive_file"],
        manifest["archive_sha256"],
        orjson.dumps(manifest).decode(),
    )
    purges = [_purge_content(partition, tenant, manifest["tenants"][tenant], manifest) for tenant in tenants]
    await LogAppender().append(conn, purges)


async def archive_partition(
    conn: asyncpg.Connection,
    partition: Partition,
    archive_dir: Path,
    days: int,
    signer: Signer | None,
    verifiers: Sequence[Verifier] = (),
    *,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
) -> Archived | None:
    """Verifies one partition in the log, archives it, verifies the archive, drops the partition and records
    the purge (steps 0-4). `verifiers`: the configured checkpoint keys (stored checkpoints and manifests are
    checked with them).

    Returns None when another run dropped the partition meanwhile.
    """
    with tracer.start_as_current_span("audit.retention archive", attributes={"audit.partition": partition.name}):
        return await _archive_partition(conn, partition, archive_dir, days, signer, verifiers, lock_timeout_seconds)


async def _archive_partition(
    conn: asyncpg.Connection,
    partition: Partition,
    archive_dir: Path,
    days: int,
    signer: Signer | None,
    verifiers: Sequence[Verifier],
    lock_timeout_seconds: float,
) -> Archived | None:
    await _verify_in_log(conn, partition, verifiers)
    archive = archive_dir / f"{partition.name}{ARCHIVE_SUFFIX}"
    events, tenants, positions = await _write_archive(conn, partition, archive)
    if positions is None:
        archive.unlink()
        dropped = await _drop_partition(conn, partition, None, verifiers, lock_timeout_seconds)
        return Archived(partition, 0, None, None, 0, None) if dropped else None
    manifest = _build_manifest(partition, events, positions, tenants, archive, days, signer)
    manifest_path = archive_dir / f"{partition.name}{MANIFEST_SUFFIX}"
    _write_atomically(manifest_path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    report = await asyncio.to_thread(verify_archive, manifest_path, verifiers)
    if not report.ok:
        raise RetentionError(f"the archive of {partition.name} does not verify, nothing dropped: {report}")
    if not await _drop_partition(conn, partition, manifest, verifiers, lock_timeout_seconds):
        return None
    return Archived(partition, events, positions[0], positions[1], len(tenants), archive)


async def retention_command(config, args, *, lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> int:
    """`audit-service retention`: one line per partition archived and dropped (or listed, with --dry-run).

    `lock_timeout_seconds` is for tests (how long dropping waits for the log's lock)."""
    outcome = "failed"
    try:
        status, outcome = await _retention(config, args, lock_timeout_seconds)
        return status
    finally:
        metrics.RETENTION_RUNS.add(1, {"outcome": outcome})


async def _retention(config, args, lock_timeout_seconds: float) -> tuple[int, str]:
    """retention_command's exit status and its outcome for audit.retention.runs."""
    days = args.days if args.days is not None else config.retention.days
    if days <= 0:
        print("audit-service retention: --days must be a positive number of days", file=sys.stderr)
        return 1, "failed"
    archive_dir = Path(args.archive_dir or config.retention.archive_dir)
    signer = load_signer(config.checkpoints.signing_key_file) if config.checkpoints.signing_key_file else None
    verifiers = checkpoint_verifiers(config.checkpoints)
    if verifiers and signer is None:
        print(
            "audit-service retention: AUDIT_CHECKPOINT_SIGNING_KEY_FILE is required: with a checkpoint verify key "
            "configured, archive manifests must be signed",
            file=sys.stderr,
        )
        return 1, "failed"
    try:
        conn = await asyncpg.connect(config.database.migrate_url or config.database.url)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"audit-service retention: cannot connect to the database: {error}", file=sys.stderr)
        return 1, "failed"
    try:
        partitions = await expired_partitions(conn, days)
        if not partitions:
            print(f"nothing to archive: no partition ended more than {days} days ago")
            return 0, "nothing_to_do"
        if args.dry_run:
            for partition in partitions:
                events, first, last = await conn.fetchrow(
                    f"SELECT count(*), min(position), max(position) FROM {partition.name}"
                )
                where = f" at positions {first}-{last}" if events else ""
                print(f"would archive and drop {partition.name} ({partition.range_text}): {events} events{where}")
            return 0, "dry_run"
        await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
        for partition in partitions:
            archived = await archive_partition(
                conn, partition, archive_dir, days, signer, verifiers, lock_timeout_seconds=lock_timeout_seconds
            )
            if archived is not None:
                print(archived, flush=True)
        return 0, "archived"
    except (RetentionError, OSError, asyncpg.PostgresError) as error:
        print(f"audit-service retention: {error}", file=sys.stderr)
        return 1, "failed"
    finally:
        await conn.close()
