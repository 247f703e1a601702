"""The log is append-only by the database's own enforcement, and tampering is detected by the hash chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

import asyncpg
import pytest
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate
from audit_service.store.verify import verify_log

from ..conftest import APP_ROLE, run_as_superuser
from ..factories import content_of, make_event, stamp

MUTATIONS = [
    "UPDATE audit_events SET message = 'rewritten' WHERE position = 2",
    "DELETE FROM audit_events WHERE position = 2",
    "TRUNCATE audit_events",
    "UPDATE audit_event_ids SET position = 99",
    "DELETE FROM audit_event_ids",
    "TRUNCATE audit_event_ids",
]


@pytest.fixture
async def populated(app):
    appender = LogAppender()
    for tenant in ("acme", "globex", "acme"):
        await appender.append(app, [content_of(stamp(make_event(tenant=tenant))) for _ in range(3)])
    return app


@pytest.mark.parametrize("statement", MUTATIONS)
async def test_the_service_role_cannot_change_or_remove_stored_events(populated, statement):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await populated.execute(statement)


@pytest.mark.parametrize("statement", MUTATIONS)
async def test_even_the_owner_is_stopped_by_the_triggers(populated, owner, statement):
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner.execute(statement)
    assert await owner.fetchval("SELECT count(*) FROM audit_events") == 9


async def test_a_partition_cannot_be_truncated_directly(populated, owner):
    partition = await owner.fetchval("SELECT audit_ensure_partition(now())")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner.execute(f"TRUNCATE {partition}")


async def test_the_service_role_cannot_disable_the_triggers(populated):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await populated.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")


async def test_verify_passes_on_an_untouched_log(populated):
    report = await verify_log(populated)
    assert report.ok, report.first_break
    assert (report.checked, report.tenants) == (9, 2)


@pytest.mark.parametrize(
    ("tamper", "broken_position", "reason"),
    [
        ("UPDATE audit_events SET message = 'nothing happened' WHERE position = 5", 5, "altered"),
        ("UPDATE audit_events SET metadata = '{\"ttl_days\": 1}' WHERE position = 8", 8, "altered"),
        ("DELETE FROM audit_events WHERE position = 4", 5, "missing or moved"),
        ("DELETE FROM audit_events WHERE position = 9", 8, "tail was cut"),
    ],
)
async def test_verify_names_the_first_position_a_superuser_tampered_with(
    populated, owner, database, tamper, broken_position, reason
):
    # A superuser can bypass the triggers; the chain is what catches it. Positions 1-3 and 7-9 are acme's.
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        await owner.execute(tamper)

    report = await verify_log(populated)
    assert not report.ok
    assert report.first_break.position == broken_position
    assert reason in report.first_break.reason

    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "verify"],
        env={"AUDIT_DATABASE_URL": database.app_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1
    assert f"chain broken at position {broken_position}" in cli.stdout


async def test_a_temporary_table_of_the_service_role_does_not_pass_for_a_partition(database, owner):
    """audit_ensure_partition runs with the owner's rights: it must not find the caller's temporary tables."""
    app = await asyncpg.connect(database.app_url)
    try:
        await app.execute("CREATE TEMPORARY TABLE audit_events_2031_05 (x int)")
        assert await app.fetchval("SELECT audit_ensure_partition('2031-05-15T00:00:00Z')") == "audit_events_2031_05"
    finally:
        await app.close()
    schema = await owner.fetchval("SELECT current_schema()")
    partition = await owner.fetchval("SELECT to_regclass($1)::text", f"{schema}.audit_events_2031_05")
    assert partition is not None, "the real partition was created"
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = $1::regclass AND inhparent = 'audit_events'::regclass",
            partition,
        )
        == 1
    )


async def test_where_public_could_create_in_the_logs_schema_the_service_role_no_longer_can(postgres, database):
    """A database created before PostgreSQL 15 (or upgraded from one) lets PUBLIC create tables in schema public:
    the service role could create a table under the name of a future monthly partition, audit_ensure_partition
    took it for the partition, and from that month every append failed. Migration 0008 revokes that right."""
    name = f"old_{database.name}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(postgres.url(name))
        try:
            await migrate(conn, up_to=7)
            await conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # as before PostgreSQL 15
            await conn.execute(f"GRANT audit_service TO {APP_ROLE}")
            app = await asyncpg.connect(postgres.url(name, user=APP_ROLE))
            try:
                await app.execute("CREATE TABLE audit_events_2031_03 (squatter integer)")  # possible before 0008
                await app.execute("DROP TABLE audit_events_2031_03")
                assert 8 in [migration.version for migration in await migrate(conn)]
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await app.execute("CREATE TABLE audit_events_2031_04 (squatter integer)")
                month = dt.datetime(2031, 4, 2, tzinfo=dt.UTC)
                stored = await LogAppender().append(app, [content_of(stamp(make_event()))], recorded_at=month)
                assert stored.appended == 1
            finally:
                await app.close()
        finally:
            await conn.close()
    finally:
        await run_as_superuser(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_table_under_a_partitions_name_is_refused_by_name_not_taken_for_the_partition(app, owner):
    """A table someone with the right to create it put under a future partition's name: the month's appends are
    refused with a message naming it (and retried by the worker) rather than failing with "no partition"."""
    await owner.execute("CREATE TABLE audit_events_2031_06 (squatter integer)")
    with pytest.raises(asyncpg.DuplicateTableError, match="audit_events_2031_06 exists but is not a partition"):
        await app.fetchval("SELECT audit_ensure_partition('2031-06-15T00:00:00Z')")
    assert await app.fetchval("SELECT audit_ensure_partition('2031-07-15T00:00:00Z')") == "audit_events_2031_07"
