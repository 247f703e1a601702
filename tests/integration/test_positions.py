"""Positions are the database's promise too: the log head only moves forward, onto positions just stored, each
held by one event; migration 0007 refuses a log whose positions already broke; and verification names a
position that a superuser (triggers off) made repeat or left empty."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from audit.v1 import audit_service_pb2 as pb
from audit_service.store.append import AppendResult, LogAppender
from audit_service.store.migrate import MigrationError, migrate
from audit_service.store.verify import verify_log

from ..conftest import run_as_superuser, run_cli
from ..factories import content_of, make_event, stamp

# Three appends of three events: acme holds positions 1-3 and 7-9, globex 4-6; the head is at 9.
BATCHES = ("acme", "globex", "acme")
MOVES_REFUSED = [
    # The finding: moved back, the next append would reuse position 9 and readers past it would never see it.
    ("UPDATE audit_log_head SET last_position = last_position - 1", "only moves forward: last_position 9 -> 8"),
    ("UPDATE audit_log_head SET last_position = last_position", "only moves forward: last_position 9 -> 9"),
    ("UPDATE audit_log_head SET last_recorded_at = '-infinity'", "only moves forward"),
    # Forward past the stored positions: the next append would leave a hole.
    ("UPDATE audit_log_head SET last_position = last_position + 1", "audit_event_ids holds 0 of those positions"),
    ("UPDATE audit_log_head SET last_position = 1000, last_recorded_at = now()", "must move to the last stored"),
]
# What the service role may do by hand: store a copy of the event at position $1 at position $2 (in the log
# only), and an id row at a position.
COPY_EVENT = """
INSERT INTO audit_events
SELECT (jsonb_populate_record(NULL::audit_events, to_jsonb(e) || jsonb_build_object('position', $2::bigint))).*
FROM audit_events AS e WHERE position = $1
"""
COPY_ID = "INSERT INTO audit_event_ids VALUES (gen_random_uuid(), $1, now())"


async def append(conn: asyncpg.Connection, tenant: str, events: int = 1) -> AppendResult:
    return await LogAppender().append(conn, [content_of(stamp(make_event(tenant))) for _ in range(events)])


async def populate(conn: asyncpg.Connection) -> None:
    for tenant in BATCHES:
        await append(conn, tenant, 3)


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


async def head(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT last_position FROM audit_log_head")


@pytest.mark.parametrize(("statement", "refusal"), MOVES_REFUSED)
async def test_the_service_role_moves_the_head_only_forward_onto_stored_positions(populated, statement, refusal):
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
        await populated.execute(statement)
    assert await head(populated) == 9


@pytest.mark.parametrize(("statement", "refusal"), MOVES_REFUSED)
async def test_even_the_owner_moves_the_head_only_forward_onto_stored_positions(populated, owner, statement, refusal):
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
        await owner.execute(statement)
    assert await head(owner) == 9


@pytest.mark.parametrize("statement", ["DELETE FROM audit_log_head", "TRUNCATE audit_log_head"])
async def test_the_head_row_stays(populated, owner, statement):
    # A new row would start positions again from 0.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await populated.execute(statement)  # no privilege
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner.execute(statement)  # the trigger
    assert await head(owner) == 9


async def test_after_a_refused_move_back_the_next_append_takes_a_position_of_its_own(populated):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await populated.execute("UPDATE audit_log_head SET last_position = last_position - 1")
    appended = await append(populated, "globex")
    assert (appended.prev_position, appended.last_position) == (9, 10)
    report = await verify_log(populated)
    assert (report.ok, report.positions) == (True, (1, 10)), report.first_break


async def test_a_head_moved_onto_positions_not_all_stored_is_refused(populated):
    # The service role stores position 11 in both tables, skipping 10, and moves the head there.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_event_ids holds 1 of those positions"):
        async with populated.transaction():
            await populated.execute(COPY_EVENT, 9, 11)
            await populated.execute(COPY_ID, 11)
            await populated.execute("UPDATE audit_log_head SET last_position = 11")
    # Or repeats position 10 in the log: two events there, none at 11.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_events holds 2 events at 1 of those"):
        async with populated.transaction():
            await populated.execute(COPY_EVENT, 9, 10)
            await populated.execute(COPY_EVENT, 5, 10)  # of another append: another recorded_at
            await populated.executemany(COPY_ID, [(10,), (11,)])
            await populated.execute("UPDATE audit_log_head SET last_position = 11")
    # Stored in full, the same move is an append like any other (the hashes are another matter: verify's).
    async with populated.transaction():
        await populated.execute(COPY_EVENT, 9, 10)
        await populated.execute(COPY_ID, 10)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="last_recorded_at"):
            async with populated.transaction():  # a savepoint
                await populated.execute("UPDATE audit_log_head SET last_position = 10, last_recorded_at = '-infinity'")
        await populated.execute("UPDATE audit_log_head SET last_position = 10")
    assert await head(populated) == 10


async def test_an_event_stored_beyond_the_head_stops_the_next_append(populated):
    # The service role puts an event at position 10 and leaves the head at 9: the next append, which takes
    # position 10 too, is refused rather than hidden from the readers that saw the first.
    await populated.execute(COPY_EVENT, 9, 10)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_events holds 2 events at 1 of those"):
        await append(populated, "globex")
    assert await head(populated) == 9


async def test_a_position_has_one_event_id_even_with_the_triggers_off(populated, owner):
    for conn in (populated, owner):
        with pytest.raises(asyncpg.UniqueViolationError, match="audit_event_ids_position"):
            await conn.execute(COPY_ID, 3)
    with pytest.raises(asyncpg.UniqueViolationError, match="audit_event_ids_position"):
        await without_triggers(owner, "INSERT INTO audit_event_ids VALUES (gen_random_uuid(), 3, now())")


async def test_concurrent_appends_each_take_positions_of_their_own(database):
    conns = [await asyncpg.connect(database.app_url) for _ in range(3)]
    try:
        for _ in range(5):
            await asyncio.gather(*(append(conn, tenant, 7) for conn, tenant in zip(conns, BATCHES, strict=True)))
        report = await verify_log(conns[0])
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    assert (report.ok, report.checked, report.positions) == (True, 105, (1, 105)), report.first_break


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


@pytest.fixture
async def old_database(postgres) -> AsyncIterator[str]:
    """The owner's URL of a database migrated up to 0006, before positions were guarded."""
    name = f"p_{uuid.uuid4().hex[:12]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    yield postgres.url(name)
    await run_as_superuser(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def schema_6(old_database) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(old_database)
    await migrate(conn, up_to=6)
    yield conn
    await conn.close()


async def test_migration_0007_guards_a_log_stored_before_it(schema_6):
    await populate(schema_6)
    assert 7 in [migration.version for migration in await migrate(schema_6)]
    await append(schema_6, "initech", 3)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await schema_6.execute("UPDATE audit_log_head SET last_position = last_position - 1")
    report = await verify_log(schema_6)
    assert (report.ok, report.positions) == (True, (1, 12)), report.first_break


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        # The finding, before 0007: the head moved back and another tenant's append took position 9 again.
        ("UPDATE audit_log_head SET last_position = 8", "position 9 is held by 2 events"),
        ("UPDATE audit_log_head SET last_position = 10", "the log has a hole: no event holds position 10"),
    ],
)
async def test_migration_0007_refuses_a_log_whose_positions_already_broke(schema_6, old_database, damage, refusal):
    await populate(schema_6)
    await schema_6.execute(damage)
    await append(schema_6, "globex")
    with pytest.raises(MigrationError, match=refusal) as refused:
        await migrate(schema_6)
    assert refused.value.version == 7 and "nothing of it applied" in str(refused.value)
    assert "cannot be renumbered" in str(refused.value)  # the hint, on the same line
    # Nothing changed: no index, no trigger, still at 0006; and the positions that broke verify as broken.
    assert await schema_6.fetchval("SELECT max(version) FROM audit_schema_migrations") == 6
    assert await schema_6.fetchval("SELECT to_regclass('audit_event_ids_position')") is None
    assert not (await verify_log(schema_6)).ok

    cli = await asyncio.to_thread(run_cli, {"AUDIT_DATABASE_URL": old_database}, "migrate")
    assert cli.returncode == 1
    assert cli.stderr.startswith("audit-service: migration 0007_positions_unique_and_gapless failed, nothing of it")
    assert refusal in cli.stderr and cli.stderr.count("\n") == 1


async def test_migration_0007_refuses_a_head_behind_the_stored_positions(schema_6):
    await populate(schema_6)
    await schema_6.execute("UPDATE audit_log_head SET last_position = 7")
    with pytest.raises(MigrationError, match="events are stored up to position 9: the head was moved back"):
        await migrate(schema_6)


# An id row of the service role's making, for an event not published yet (its producer chose the id).
REGISTER_ID = "INSERT INTO audit_event_ids VALUES ($1::uuid, $2, now())"


@pytest.mark.parametrize("position", [0, -1])
async def test_the_service_role_cannot_register_an_event_id_where_no_event_can_be(populated, position):
    """The finding: an id registered at position 0 or below was accepted, and the event later published under that
    id was taken for one already stored: acknowledged, never stored, never dead-lettered; verify said ok."""
    event = stamp(make_event("acme"))
    with pytest.raises(asyncpg.CheckViolationError, match="audit_event_ids_position_held"):
        await populated.execute(REGISTER_ID, event.event_id, position)
    stored = await LogAppender().append(populated, [content_of(event)])
    assert (stored.last_position, stored.duplicates) == (10, 0)


async def test_verify_names_an_event_id_registered_where_no_event_can_be(populated, owner):
    # As a log migrated before 0009 may hold: the owner drops the check, the service role registers the id.
    await owner.execute("ALTER TABLE audit_event_ids DROP CONSTRAINT audit_event_ids_position_held")
    event = stamp(make_event("acme"))
    await populated.execute(REGISTER_ID, event.event_id, -1)
    assert (await LogAppender().append(populated, [content_of(event)])).duplicates == 1  # the event it swallows

    report = await verify_log(populated)
    assert (report.ok, report.first_break.tenant, report.first_break.position) == (False, "", -1)
    assert report.first_break.reason.startswith("audit_event_ids registers an event id at position -1, which no event")


async def test_verify_names_an_event_id_registered_beyond_the_head(populated):
    """Every append stops at it (a unique violation, retried for ever): verify said ok."""
    await populated.execute(REGISTER_ID, str(uuid.uuid4()), 10)
    with pytest.raises(asyncpg.UniqueViolationError, match="audit_event_ids_position"):
        await append(populated, "acme")
    report = await verify_log(populated)
    assert (report.ok, report.first_break.position) == (False, 10)
    assert "beyond the log head at position 9: the next append that reaches it collides" in report.first_break.reason
    assert (await verify_log(populated, tenant="acme")).ok  # a tenant's verification leaves the log's ids alone


async def test_verify_names_an_event_id_a_superuser_removed(populated, owner):
    await without_triggers(owner, "DELETE FROM audit_event_ids WHERE position = 4")
    report = await verify_log(populated)
    assert (report.ok, report.first_break.position) == (False, 9)
    assert report.first_break.reason.startswith("audit_event_ids registers 8 event ids for the log's 9 positions")


async def test_migration_0009_refuses_an_event_id_registered_where_no_event_can_be(schema_6):
    await migrate(schema_6, up_to=8)
    await populate(schema_6)
    await schema_6.execute(REGISTER_ID, "0193a5c4-7b1e-7c3a-9f00-4c2d1e0b9a77", 0)
    with pytest.raises(MigrationError, match="registers event id 0193a5c4-7b1e-7c3a-9f00-4c2d1e0b9a77 at position 0"):
        await migrate(schema_6)
    assert await schema_6.fetchval("SELECT max(version) FROM audit_schema_migrations") == 8
