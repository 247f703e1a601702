"""Retention archives expired partitions to verifiable files, drops them whole, and leaves a log that still
verifies, counts what it holds, rebuilds its streams exactly and remembers every event id it ever stored."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import orjson
from audit.v1 import event_pb2
from audit_service.config import Config, load_config
from audit_service.core.checkpoints import ChainHead, Checkpoint, sign_checkpoint, to_json_line
from audit_service.core.signing import Signer, generate_private_key_pem, load_signer
from audit_service.store.append import LogAppender
from audit_service.store.checkpoints import take_checkpoint
from audit_service.store.projections import rebuild_projections
from audit_service.store.retention import retention_command
from audit_service.store.verify import verify_log

from ..conftest import REPO_ROOT
from ..factories import content_of, make_event, stamp
from .test_tampering import rewrite_history

COUNT_ROWS = "SELECT * FROM audit_counts_hourly ORDER BY tenant, hour, action, resource_type, outcome, actor_type"
ACTION_COUNT_ROWS = "SELECT * FROM audit_action_counts_hourly ORDER BY tenant, hour"
STREAM_ROWS = "SELECT * FROM audit_resource_heads ORDER BY tenant, resource_type, resource_id"
COUNTS_OVER_LOG = """
SELECT tenant, date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00') AS hour, action, resource_type,
       outcome, actor_type, count(*) AS events
FROM audit_events GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
"""
ACTION_COUNTS_OVER_LOG = """
SELECT tenant, date_bin('1 hour', occurred_at, timestamptz '1970-01-01 00:00:00+00') AS hour, sum(events)
FROM (SELECT tenant, occurred_at, action, 1 AS events FROM audit_events) AS e GROUP BY 1, 2 ORDER BY 1, 2
"""
TENANTS = ("acme", "globex", "initech")


def month_start(moment: dt.datetime, months_back: int) -> dt.datetime:
    year, month = moment.year, moment.month - months_back
    while month <= 0:
        year, month = year - 1, month + 12
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def partition_name(start: dt.datetime) -> str:
    return f"audit_events_{start:%Y_%m}"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_service.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


async def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, env=env)


async def build_history(database, now: dt.datetime, signer: Signer) -> tuple[list[event_pb2.AuditEvent], Checkpoint]:
    """Six months of events, oldest first, through the real append path: 40 per month over three tenants,
    some on shared resource streams with states; returns them and a checkpoint signed at the end of month -4."""
    conn = await asyncpg.connect(database.app_url)
    stored = []
    checkpoint = None
    try:
        appender = LogAppender()
        for months_back in range(5, -1, -1):
            start = month_start(now, months_back)
            for batch in range(4):
                recorded_at = start + dt.timedelta(days=3 + batch * 5, hours=batch)
                if recorded_at > now:
                    recorded_at = now - dt.timedelta(minutes=5 - batch)
                events = []
                for i in range(10):
                    n = len(stored) + len(events)
                    event = make_event(TENANTS[n % 3], action=("api_key.create", "secret.read", "Login")[n % 4 % 3])
                    if n % 5 == 0:
                        event.resource.id = f"shared-{n % 2}"  # streams spanning archived and kept months
                        event.change.after.update({"rev": n})
                    elif n % 5 == 1 and months_back >= 4:
                        event.resource.id = "archived-only"  # a stream that ends in archived months
                        event.change.after.update({"rev": n})
                    occurred = recorded_at - dt.timedelta(minutes=i)
                    if months_back == 2 and batch == 0 and i == 0:
                        # Late: recorded in a kept month, occurred in an hour of an archived month that holds
                        # events of the same tenant (acme), whose count row must keep only this one.
                        occurred = month_start(now, 3) + dt.timedelta(days=3, minutes=-30)
                    event.occurred_at.FromDatetime(occurred)
                    events.append(stamp(event))
                await appender.append(conn, [content_of(event) for event in events], recorded_at=recorded_at)
                stored.extend(events)
            if months_back == 4:
                checkpoint = await take_checkpoint(conn, signer)
    finally:
        await conn.close()
    return stored, checkpoint


def tamper(archive: Path, edit) -> None:
    lines = gzip.decompress(archive.read_bytes()).splitlines(keepends=True)
    archive.write_bytes(gzip.compress(b"".join(edit(lines))))


async def test_retention_archives_verifiably_and_the_remaining_log_still_verifies(database, owner, tmp_path):
    now = dt.datetime.now(dt.UTC)
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(generate_private_key_pem())
    signer = load_signer(str(key_file))
    events, checkpoint = await build_history(database, now, signer)
    archived_months = [month_start(now, back) for back in (5, 4, 3)]
    kept_months = [month_start(now, back) for back in (2, 1, 0)]
    # Everything that ended before the start of month -2 is expired.
    days = (now - month_start(now, 2)).days
    archive_dir = tmp_path / "archives"
    env = {
        "AUDIT_DATABASE_URL": database.app_url,
        "AUDIT_MIGRATE_DATABASE_URL": database.owner_url,
        "AUDIT_ARCHIVE_DIR": str(archive_dir),
        "AUDIT_RETENTION_DAYS": str(days),
        "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file),
    }
    positions = {
        partition_name(start): tuple(
            await owner.fetchrow(f"SELECT count(*), min(position), max(position) FROM {partition_name(start)}")
        )
        for start in archived_months
    }
    assert all(count == 40 for count, _, _ in positions.values())
    late_hour = month_start(now, 3) + dt.timedelta(days=2, hours=23)
    late_hour_count = "SELECT sum(events) FROM audit_counts_hourly WHERE tenant = 'acme' AND hour = $1"
    assert await owner.fetchval(late_hour_count, late_hour) > 1

    dry = await cli("retention", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert [line.split(" (")[0] for line in dry.stdout.splitlines()] == [
        f"would archive and drop {partition_name(start)}" for start in archived_months
    ]
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 240 and not archive_dir.exists()

    result = await cli("retention", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, start in zip(lines, archived_months, strict=True):
        name = partition_name(start)
        _, first, last = positions[name]
        assert line.startswith(f"archived {name} (") and f"40 events at positions {first}-{last} of 3 tenants" in line

    # The expired partitions are gone, the recent ones kept, and the log holds the rest plus the purges.
    for start in archived_months:
        assert await owner.fetchval("SELECT to_regclass($1)", partition_name(start)) is None
    for start in kept_months:
        assert await owner.fetchval("SELECT to_regclass($1)", partition_name(start)) is not None
    remaining = await owner.fetchval("SELECT count(*) FROM audit_events WHERE action <> 'audit.retention.purge'")
    assert remaining == 120

    # Archives and manifests exist, and verify offline, signature included.
    for start in archived_months:
        name = partition_name(start)
        manifest = orjson.loads((archive_dir / f"{name}.manifest.json").read_bytes())
        count, first, last = positions[name]
        assert (manifest["events"], manifest["first_position"], manifest["last_position"]) == (count, first, last)
        assert sorted(manifest["tenants"]) == sorted(TENANTS) and manifest["signature"]
        assert sum(run["events"] for run in manifest["tenants"].values()) == 40
        archived_row = await owner.fetchrow("SELECT * FROM audit_archives WHERE partition_name = $1", name)
        assert archived_row["archive_sha256"] == manifest["archive_sha256"] and archived_row["events"] == 40
    manifests = sorted(str(path) for path in archive_dir.glob("*.manifest.json"))
    verified = await cli("verify-file", *manifests, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("ok: ") == 4 and verified.stdout.count("signature ok") == 3
    # From the genesis hash through the three archives: every tenant's chain links from one to the next.
    assert "ok: archive sequence: 3 archives in sequence; 9 tenant chain links between them checked" in verified.stdout

    # The heads a checkpoint signed at the end of month -4 are in its archive, with the signed hashes; a
    # checkpoint stating another hash for one of them (history rewritten, manifest and all) fails it.
    checkpoints_file = tmp_path / "checkpoints.jsonl"
    checkpoints_file.write_text(to_json_line(checkpoint) + "\n")
    month_4 = str(archive_dir / f"{partition_name(archived_months[1])}.manifest.json")
    with_checkpoints = await cli("verify-file", month_4, "--checkpoints", str(checkpoints_file), env=env)
    assert with_checkpoints.returncode == 0, with_checkpoints.stdout + with_checkpoints.stderr
    assert "3 chain heads match signed checkpoints" in with_checkpoints.stdout
    statement = checkpoint.parsed()
    heads = dict(statement.heads)
    heads["acme"] = ChainHead(heads["acme"].position, bytes(32))
    forged = sign_checkpoint(signer, statement.log_position, statement.created_at, heads)
    checkpoints_file.write_text(to_json_line(forged) + "\n")
    rewritten = await cli("verify-file", month_4, "--checkpoints", str(checkpoints_file), env=env)
    assert rewritten.returncode == 1
    assert f"position {heads['acme'].position} (line " in rewritten.stdout
    assert "hash differs from the signed checkpoint" in rewritten.stdout

    # The live log verifies, anchored where the archives end, and goes on from the position after the archives
    # (1-120) to its head: the 120 kept events and 9 purges.
    report = await verify_log(owner)
    assert report.ok, report.first_break
    assert (report.archived_positions, report.positions) == (120, (121, 249))
    assert (await verify_log(owner, to_position=100)).positions is None  # all archived
    anchors = {row["tenant"]: row["position"] for row in await owner.fetch("SELECT * FROM audit_chain_anchors")}
    newest = orjson.loads((archive_dir / f"{partition_name(archived_months[-1])}.manifest.json").read_bytes())
    assert anchors == {tenant: run["last_position"] for tenant, run in newest["tenants"].items()}

    # The purge is in the log: one event per tenant and partition, by the system actor.
    purges = await owner.fetch(
        "SELECT tenant, actor_id, actor_type, actor_slug, resource_type, resource_id, message, metadata "
        "FROM audit_events WHERE action = 'audit.retention.purge' ORDER BY position"
    )
    assert len(purges) == 9
    assert {(row["tenant"], row["resource_id"]) for row in purges} == {
        (tenant, partition_name(start)) for tenant in TENANTS for start in archived_months
    }
    for row in purges:
        assert (row["actor_id"], row["actor_type"], row["actor_slug"]) == (
            "audit-service",
            event_pb2.SUBJECT_TYPE_SYSTEM,
            "retention",
        )
        assert row["resource_type"] == "audit_partition" and row["message"].startswith("archived and dropped ")
        metadata = orjson.loads(row["metadata"])
        assert metadata["archive_file"] == f"{row['resource_id']}.ndjson.gz"

    # The count projections count exactly what the log holds, including the late event's hour.
    counts = [tuple(row) for row in await owner.fetch(COUNT_ROWS)]
    assert counts == [tuple(row) for row in await owner.fetch(COUNTS_OVER_LOG)]
    action_counts = [tuple(row) for row in await owner.fetch(ACTION_COUNT_ROWS)]
    assert [row[:3] for row in action_counts] == [tuple(row) for row in await owner.fetch(ACTION_COUNTS_OVER_LOG)]
    assert sum(row[-1] for row in counts) == 129
    assert await owner.fetchval(late_hour_count, late_hour) == 1

    # A rebuild from the baseline and what remains gives exactly the projections kept online.
    streams = [tuple(row) for row in await owner.fetch(STREAM_ROWS)]
    assert any(row[2] == "archived-only" for row in streams)
    await rebuild_projections(owner)
    assert [tuple(row) for row in await owner.fetch(STREAM_ROWS)] == streams
    assert [tuple(row) for row in await owner.fetch(COUNT_ROWS)] == counts
    assert [tuple(row) for row in await owner.fetch(ACTION_COUNT_ROWS)] == action_counts

    # An archived event's id is still known: appending it again stores nothing.
    conn = await asyncpg.connect(database.app_url)
    try:
        again = await LogAppender().append(conn, [content_of(events[0])])
    finally:
        await conn.close()
    assert (again.appended, again.duplicates) == (0, 1)
    assert await owner.fetchval("SELECT count(*) FROM audit_events WHERE event_id = $1", events[0].event_id) == 0

    # A rerun finds nothing to do.
    rerun = await cli("retention", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith("nothing to archive")
    assert await owner.fetchval("SELECT count(*) FROM audit_events WHERE action = 'audit.retention.purge'") == 9

    # Tampering is caught offline: an edited line, a deleted line, an altered signed manifest.
    name = partition_name(archived_months[0])
    _, first, _ = positions[name]

    def copy(label: str) -> tuple[Path, Path]:
        directory = tmp_path / label
        directory.mkdir()
        shutil.copy(archive_dir / f"{name}.ndjson.gz", directory)
        shutil.copy(archive_dir / f"{name}.manifest.json", directory)
        return directory / f"{name}.ndjson.gz", directory / f"{name}.manifest.json"

    edited, edited_manifest = copy("edited")
    tamper(edited, lambda lines: [*lines[:5], lines[5].replace(b"Alice Example", b"Mallory"), *lines[6:]])
    deleted, deleted_manifest = copy("deleted")
    tamper(deleted, lambda lines: [*lines[:7], *lines[8:]])
    _, resigned_manifest = copy("resigned")
    altered = orjson.loads(resigned_manifest.read_bytes())
    altered["retention_days"] = 1
    resigned_manifest.write_bytes(orjson.dumps(altered))

    checked = await cli("verify-file", str(edited_manifest), str(deleted_manifest), str(resigned_manifest), env=env)
    assert checked.returncode == 1
    edited_line, deleted_line, resigned_line = checked.stdout.splitlines()
    assert edited_line.startswith(f"FAILED: {edited_manifest}: position {first + 5} (line 6): hash does not match")
    assert deleted_line.startswith(f"FAILED: {deleted_manifest}: position {first + 8} (line 8): position {first + 7}")
    assert resigned_line.startswith(f"FAILED: {resigned_manifest}: the manifest's signature does not match")
    # The archive file named directly is verified against the manifest beside it.
    direct = await cli("verify-file", str(edited), env=env)
    assert direct.returncode == 1 and f"position {first + 5} (line 6)" in direct.stdout


async def test_retention_fails_in_one_line_without_dropping_and_a_rerun_completes_the_work(database, owner, tmp_path):
    now = dt.datetime.now(dt.UTC)
    old = month_start(now, 4) + dt.timedelta(days=2)
    conn = await asyncpg.connect(database.app_url)
    try:
        await LogAppender().append(conn, [content_of(stamp(make_event("acme"))) for _ in range(5)], recorded_at=old)
    finally:
        await conn.close()
    not_a_directory = tmp_path / "occupied"
    not_a_directory.write_text("a file where the archive directory should be")
    env = {
        "AUDIT_DATABASE_URL": database.app_url,
        "AUDIT_MIGRATE_DATABASE_URL": database.owner_url,
        "AUDIT_ARCHIVE_DIR": str(not_a_directory),
    }

    result = await cli("retention", "--days", "30", env=env)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "occupied" in result.stderr
    assert await owner.fetchval("SELECT to_regclass($1)", partition_name(month_start(now, 4))) is not None
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 5
    assert await owner.fetchval("SELECT count(*) FROM audit_archives") == 0

    # As after a crash between writing the files and dropping: stale files are rewritten, the partition dropped.
    not_a_directory.unlink()
    not_a_directory.mkdir()
    name = partition_name(month_start(now, 4))
    (not_a_directory / f"{name}.ndjson.gz").write_bytes(b"half written")
    (not_a_directory / f"{name}.manifest.json").write_bytes(b"{")
    empty = partition_name(month_start(now, 5))
    await owner.execute("SELECT audit_ensure_partition($1)", month_start(now, 5))

    rerun = await cli("retention", "--days", "30", env=env)

    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines()[0].startswith(f"dropped {empty} (") and "held no events" in rerun.stdout
    assert rerun.stdout.splitlines()[1].startswith(f"archived {name} (")
    assert not (not_a_directory / f"{empty}.ndjson.gz").exists()
    for partition in (name, empty):
        assert await owner.fetchval("SELECT to_regclass($1)", partition) is None
    verified = await cli("verify-file", str(not_a_directory / f"{name}.ndjson.gz"), env=env)
    assert verified.returncode == 0 and "5 events at positions 1-5 in 1 tenant chains" in verified.stdout
    assert "unsigned" in verified.stdout


# A small history for the tests below: acme and globex alternate, six events in each of months -4 and -3
# (positions 1-6 and 7-12, expired) and in the current month (13-18); acme holds the odd positions. A checkpoint
# is signed after month -4: it names acme's head 5 and globex's 6.
SMALL_TENANTS = ("acme", "globex")


async def small_history(database, now: dt.datetime, signer: Signer) -> int:
    """Stores the small history; returns the retention days after which months -4 and -3 are expired."""
    conn = await asyncpg.connect(database.app_url)
    try:
        appender = LogAppender()
        for months_back in (4, 3, 0):
            recorded_at = month_start(now, months_back) + dt.timedelta(days=3) if months_back else None
            events = [stamp(make_event(SMALL_TENANTS[i % 2])) for i in range(6)]
            await appender.append(conn, [content_of(event) for event in events], recorded_at=recorded_at)
            if months_back == 4:
                await take_checkpoint(conn, signer)
    finally:
        await conn.close()
    return (now - month_start(now, 2)).days


def retention_config(database, tmp_path: Path, key_file: Path, days: int) -> Config:
    return load_config(
        env={
            "AUDIT_DATABASE_URL": database.app_url,
            "AUDIT_MIGRATE_DATABASE_URL": database.owner_url,
            "AUDIT_ARCHIVE_DIR": str(tmp_path / "archives"),
            "AUDIT_RETENTION_DAYS": str(days),
            "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file),
        }
    )


def new_signer(tmp_path: Path) -> tuple[Signer, Path]:
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(generate_private_key_pem())
    return load_signer(str(key_file)), key_file


RETENTION_ARGS = argparse.Namespace(days=None, archive_dir=None, dry_run=False)
SNAPSHOT_QUERIES = (
    "SELECT * FROM audit_chain_anchors ORDER BY tenant",
    "SELECT * FROM audit_chain_heads ORDER BY tenant",
    "SELECT * FROM audit_resource_baseline ORDER BY tenant, resource_type, resource_id",
    STREAM_ROWS,
    COUNT_ROWS,
    ACTION_COUNT_ROWS,
    "SELECT count(*) FROM audit_archives",
    "SELECT position, hash FROM audit_events ORDER BY position",
)


async def snapshot(owner: asyncpg.Connection) -> list[list[tuple]]:
    """What step 4 of retention changes (besides dropping the partition)."""
    return [[tuple(row) for row in await owner.fetch(query)] for query in SNAPSHOT_QUERIES]


async def superuser(owner: asyncpg.Connection, *statements: str) -> None:
    """Runs statements with every trigger off (the append-only guards included), as a superuser can."""
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await owner.execute(statement)


async def test_retained_events_deleted_behind_a_moved_anchor_or_an_altered_archive_record_fail_verification(
    database, owner, tmp_path, capsys
):
    now = dt.datetime.now(dt.UTC)
    signer, key_file = new_signer(tmp_path)
    days = await small_history(database, now, signer)
    assert await retention_command(retention_config(database, tmp_path, key_file, days), RETENTION_ARGS) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    keys = (signer.verifier,)
    assert (await verify_log(owner, verifiers=keys)).ok
    anchor = await owner.fetchrow("SELECT position, hash FROM audit_chain_anchors WHERE tenant = 'acme'")
    assert anchor["position"] == 11

    # acme's oldest retained event (13) deleted, and its anchor moved onto it: what is left links up again.
    deleted_hash = await owner.fetchval("SELECT hash FROM audit_events WHERE position = 13")
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute("DELETE FROM audit_events WHERE position = 13")
        await owner.execute(
            "UPDATE audit_chain_anchors SET position = 13, hash = $1 WHERE tenant = 'acme'", deleted_hash
        )

    for verifiers in (keys, ()):
        broken = (await verify_log(owner, verifiers=verifiers)).first_break
        assert (broken.tenant, broken.position) == ("acme", 15), broken
        assert "previous event at position 11" in broken.reason and "missing" in broken.reason
    cli_env = {"AUDIT_DATABASE_URL": database.app_url, "AUDIT_CHECKPOINT_SIGNING_KEY_FILE": str(key_file)}
    checked = await cli("verify", "--tenant", "acme", env=cli_env)
    assert checked.returncode == 1 and "tenant 'acme': chain broken at position 15" in checked.stdout

    # Only the anchor moved (the events intact): the anchor no longer matches the archives' manifests.
    await superuser(owner, "UPDATE audit_chain_anchors SET position = 9 WHERE tenant = 'globex'")
    moved = await verify_log(owner, tenant="globex")
    assert (moved.first_break.tenant, moved.first_break.position) == ("globex", 12)
    assert "the anchor was moved" in moved.first_break.reason


async def test_an_altered_or_deleted_archive_record_fails_verification(database, owner, tmp_path, capsys):
    now = dt.datetime.now(dt.UTC)
    signer, key_file = new_signer(tmp_path)
    days = await small_history(database, now, signer)
    assert await retention_command(retention_config(database, tmp_path, key_file, days), RETENTION_ARGS) == 0
    capsys.readouterr()
    keys = (signer.verifier,)
    name = partition_name(month_start(now, 3))

    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute(
            "UPDATE audit_archives SET manifest = jsonb_set(manifest, '{retention_days}', '1') "
            "WHERE partition_name = $1",
            name,
        )
    broken = (await verify_log(owner, verifiers=keys)).first_break
    assert (broken.tenant, broken.position, broken.archive) == ("", 7, name)
    assert "signature does not match" in broken.reason
    assert str(broken).startswith(f"archive record at position 7: the record of archived partition {name}")

    # An unsigned manifest is not accepted either once a key is configured.
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute(
            "UPDATE audit_archives SET manifest = manifest - 'signature' - 'key_id' WHERE partition_name = $1", name
        )
    assert "unsigned" in (await verify_log(owner, verifiers=keys)).first_break.reason

    # The oldest archive's record deleted: the archives no longer cover the positions from 1 (with no key too).
    await superuser(owner, f"DELETE FROM audit_archives WHERE partition_name = '{partition_name(month_start(now, 4))}'")
    gap = (await verify_log(owner)).first_break
    assert (gap.position, gap.archive) == (7, name) and "archives before it end at position 0" in gap.reason


async def test_retention_refuses_a_partition_whose_history_was_rewritten_after_a_signed_checkpoint(
    database, owner, tmp_path, capsys
):
    now = dt.datetime.now(dt.UTC)
    signer, key_file = new_signer(tmp_path)
    days = await small_history(database, now, signer)
    # acme's event 3 altered and every later hash of acme recomputed: the chain links up, the checkpoint signed
    # after month -4 names acme's head 5 with its old hash.
    await rewrite_history(owner, "acme", 3)
    assert (await verify_log(owner)).ok
    before = await snapshot(owner)

    status = await retention_command(retention_config(database, tmp_path, key_file, days), RETENTION_ARGS)

    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    name = partition_name(month_start(now, 4))
    assert captured.err.startswith(f"audit-service retention: {name} does not verify in the log, nothing archived")
    assert "tenant 'acme': chain broken at position 5" in captured.err
    for months_back in (4, 3):
        assert await owner.fetchval("SELECT to_regclass($1)", partition_name(month_start(now, months_back)))
    assert await snapshot(owner) == before
    assert not list((tmp_path / "archives").glob("*.manifest.json"))


async def test_retention_gives_up_in_one_line_while_a_long_reader_holds_the_log(database, owner, tmp_path, capsys):
    now = dt.datetime.now(dt.UTC)
    signer, key_file = new_signer(tmp_path)
    days = await small_history(database, now, signer)
    config = retention_config(database, tmp_path, key_file, days)
    before = await snapshot(owner)
    reader = await asyncpg.connect(database.app_url)
    try:
        reading = reader.transaction(isolation="repeatable_read", readonly=True)
        await reading.start()
        assert await reader.fetchval("SELECT count(*) FROM audit_events") == 18

        status = await retention_command(config, RETENTION_ARGS, lock_timeout_seconds=0.2)

        assert status == 1
        err = capsys.readouterr().err
        name = partition_name(month_start(now, 4))
        assert len(err.splitlines()) == 1
        assert err.startswith(f"audit-service retention: {name}: the log stayed locked for 0.2 s") and "later" in err
        assert await owner.fetchval("SELECT to_regclass($1)", name) is not None
        assert await snapshot(owner) == before
        await reading.rollback()
    finally:
        await reader.close()

    assert await retention_command(config, RETENTION_ARGS, lock_timeout_seconds=0.2) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert await owner.fetchval("SELECT to_regclass($1)", name) is None
    assert (await verify_log(owner, verifiers=(signer.verifier,))).ok


async def test_a_failure_inside_the_dropping_transaction_changes_nothing(database, owner, tmp_path, capsys):
    now = dt.datetime.now(dt.UTC)
    signer, key_file = new_signer(tmp_path)
    days = await small_history(database, now, signer)
    config = retention_config(database, tmp_path, key_file, days)
    before = await snapshot(owner)
    # Fails the transaction of step 4 after the baseline fold, the anchors and the recount, at the archive record.
    await owner.execute(
        "CREATE FUNCTION fail_archive() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected failure while recording the archive'; END $$"
    )
    await owner.execute(
        "CREATE TRIGGER fail_archive BEFORE INSERT ON audit_archives FOR EACH ROW EXECUTE FUNCTION fail_archive()"
    )

    assert await retention_command(config, RETENTION_ARGS) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "injected failure" in err
    name = partition_name(month_start(now, 4))
    assert await owner.fetchval("SELECT to_regclass($1)", name) is not None
    assert await snapshot(owner) == before  # anchors, baseline, streams, counts, archives, events

    await owner.execute("DROP TRIGGER fail_archive ON audit_archives")
    assert await retention_command(config, RETENTION_ARGS) == 0
    assert await owner.fetchval("SELECT to_regclass($1)", name) is None
    assert await owner.fetchval("SELECT count(*) FROM audit_chain_anchors") == 2
