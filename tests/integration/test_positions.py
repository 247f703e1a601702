"""Verification names a position of the log that a superuser (triggers off) made repeat or left empty."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.store.append import AppendResult, LogAppender
from audit_service.store.verify import verify_log

from ..factories import content_of, make_event, stamp

# Three appends of three events: acme holds positions 1-3 and 7-9, globex 4-6; the head is at 9.
BATCHES = ("acme", "globex", "acme")


async def append(conn: asyncpg.Connection, tenant: str, events: int = 1) -> AppendResult:
    return await LogAppender().append(conn, [content_of(stamp(make_event(tenant))) for _ in range(events)])


async def populate(conn: asyncpg.Connection) -> None:
    for tenant in BATCHES:
        await append(conn, tenant, 3)


@pytest.fixture
async def app(database) -> AsyncIterator[asyncpg.Connection]:
    """The service role (a login role that is a member of audit_service), as the ingest worker connects."""
    conn = await asyncpg.connect(database.app_url)
    yield conn
    await conn.close()


@pytest.fixture
async def populated(app) -> asyncpg.Connection:
    await populate(app)
    return app


async def without_triggers(owner: asyncpg.Connection, *statements: str) -> None:
    """Runs statements as a superuser who bypasses every trigger (not the unique indexes)."""
    async with owner.transaction():
        await owner.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            await owner.execute(statement)


async def append_without_triggers(owner: asyncpg.Connection, tenant: str) -> AppendResult:
    await owner.execute("SET session_replication_role = replica")
    try:
        return await append(owner, tenant)
    finally:
        await owner.execute("RESET session_replication_role")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_service.cli", *args],
        env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_verify_names_a_position_a_superuser_made_repeat(populated, owner, database, api):
    # The finding with the guards off: the head moved back (and the unique index gone, which only the owner or a
    # superuser can drop), then the next append, of another tenant, takes position 9 again. Each tenant's chain
    # still links up; the log's positions do not.
    await without_triggers(
        owner, "DROP INDEX IF EXISTS audit_event_ids_position", "UPDATE audit_log_head SET last_position = 8"
    )
    appended = await append_without_triggers(owner, "globex")
    assert (appended.prev_position, appended.last_position) == (8, 9)

    report = await verify_log(populated)
    assert (report.ok, report.checked) == (False, 10)
    assert (report.first_break.tenant, report.first_break.position) == ("", 9)
    assert report.first_break.reason == "position 9 is held by 2 events: a reader past it misses all but one"
    for tenant in ("acme", "globex"):  # each tenant's event at 9 shares it
        broken = (await verify_log(populated, tenant=tenant)).first_break
        assert (broken.tenant, broken.position, "shares it with 1 other event" in broken.reason) == (tenant, 9, True)
    assert (await verify_log(populated, to_position=8)).ok

    cli = await asyncio.to_thread(run_cli, {"AUDIT_DATABASE_URL": database.app_url}, "verify")
    assert cli.returncode == 1
    assert cli.stdout == (
        "FAILED after 10 events: log positions broken at position 9: position 9 is held by 2 events: a reader past "
        "it misses all but one\n"
    )
    response = await api.VerifyChain(pb.VerifyChainRequest())
    assert (response.ok, response.first_break.position, response.first_break.tenant) == (False, 9, "")
    assert "held by 2 events" in response.first_break.reason
    response = await api.VerifyChain(pb.VerifyChainRequest(tenant="globex"))
    assert (response.ok, response.first_break.position, response.first_break.tenant) == (False, 9, "globex")


async def test_verify_names_a_position_a_superuser_left_empty(populated, owner, database, api):
    # The head moved forward with the guards off: the next append starts after a position no event holds.
    await without_triggers(owner, "UPDATE audit_log_head SET last_position = 10")
    appended = await append(populated, "globex")
    assert (appended.prev_position, appended.last_position) == (10, 11)

    report = await verify_log(populated)
    assert (report.ok, report.checked, report.first_break.position) == (False, 10, 10)
    assert report.first_break.reason == "no event holds position 10 (the next event holds position 11)"
    assert (await verify_log(populated, from_position=11)).positions == (11, 11)
    assert (await verify_log(populated, to_position=9)).positions == (1, 9)
    assert (await verify_log(populated, from_position=9, to_position=11)).first_break.position == 10
    # A missing position belongs to no tenant: a tenant's verification checks that its events hold their own.
    assert (await verify_log(populated, tenant="globex")).ok

    cli = await asyncio.to_thread(
        run_cli, {"AUDIT_DATABASE_URL": database.app_url}, "verify", "--from-position", "5", "--to-position", "10"
    )
    assert (cli.returncode, cli.stdout) == (
        1,
        "FAILED after 5 events: log positions broken at position 10: no event holds position 10 (the log head is "
        "at position 11)\n",
    )
    response = await api.VerifyChain(pb.VerifyChainRequest())
    assert (response.ok, response.first_break.position) == (False, 10)


@pytest.mark.parametrize(
    ("moved_to", "position", "reason"),
    [
        (11, 10, "no event holds position 10 or any after it up to position 11 (the log head is at position 11)"),
        (
            8,
            9,
            "an event holds position 9, beyond the log head at position 8: the head was moved back, and the next "
            "append would repeat the position",
        ),
    ],
)
async def test_verify_names_the_first_position_between_the_events_and_a_moved_head(
    populated, owner, database, moved_to, position, reason
):
    await without_triggers(owner, f"UPDATE audit_log_head SET last_position = {moved_to}")
    report = await verify_log(populated)
    assert (report.ok, report.checked, report.first_break.position) == (False, 9, position)
    assert report.first_break.reason == reason
    cli = await asyncio.to_thread(run_cli, {"AUDIT_DATABASE_URL": database.app_url}, "verify")
    assert (cli.returncode, cli.stdout) == (
        1,
        f"FAILED after 9 events: log positions broken at position {position}: {reason}\n",
    )


async def test_an_untouched_log_verifies_its_positions(populated, database):
    cli = await asyncio.to_thread(run_cli, {"AUDIT_DATABASE_URL": database.app_url}, "verify")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.startswith("ok: 9 events in 2 tenant chains verified")
    assert cli.stdout.endswith("; positions 1-9 held by one event each\n")
    tenant = await asyncio.to_thread(run_cli, {"AUDIT_DATABASE_URL": database.app_url}, "verify", "--tenant", "acme")
    assert tenant.stdout.endswith("; no other event holds the position of any of them\n"), tenant.stdout
