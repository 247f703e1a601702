"""The count projections are pure functions of the log: kept online by the append transaction, and rebuilt
identically by `audit-service rebuild-projections`."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys

from audit.v1 import event_pb2
from audit_service.store.migrate import migrate

from ..conftest import REPO_ROOT, eventually
from ..factories import make_event

PROJECTION_ROWS = "SELECT * FROM audit_counts_hourly ORDER BY tenant, hour, action, resource_type, outcome, actor_type"
ACTION_PROJECTION_ROWS = "SELECT * FROM audit_action_counts_hourly ORDER BY tenant, hour"
STREAM_ROWS = "SELECT * FROM audit_resource_heads ORDER BY tenant, resource_type, resource_id"


async def test_rebuild_projections_reproduces_exactly_the_rows_written_online(publisher, start_worker, owner, database):
    await start_worker()
    now = dt.datetime.now(dt.UTC)
    for i in range(120):
        event = make_event(
            ("acme", "globex")[i % 2],
            action=("api_key.create", "secret.read", "Login")[i % 3],
            outcome=(event_pb2.OUTCOME_SUCCESS, event_pb2.OUTCOME_DENIED)[i % 5 == 0],
        )
        if i % 4 == 0:
            event.ClearField("resource")
        elif i % 4 == 1:
            event.resource.id = f"shared-{i % 3}"  # streams of several revisions
        event.occurred_at.FromDatetime(now - dt.timedelta(hours=i % 30, minutes=i))
        await publisher.publish(event)

    async def all_stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == 120

    await eventually(all_stored, what="every event stored")
    online = [tuple(row) for row in await owner.fetch(PROJECTION_ROWS)]
    assert sum(row[-1] for row in online) == 120 and len(online) > 30
    online_by_action = [tuple(row) for row in await owner.fetch(ACTION_PROJECTION_ROWS)]
    assert sum(row[2] for row in online_by_action) == 120 and len(online_by_action) >= 30
    # Ranked as a histogram bucket lists them: most events first, then by action.
    for _, _, events, actions, counts in online_by_action:
        assert sum(counts) == events
        pairs = list(zip(actions, counts, strict=True))
        assert pairs == sorted(pairs, key=lambda kv: (-kv[1], kv[0]))

    streams = [tuple(row) for row in await owner.fetch(STREAM_ROWS)]
    assert len(streams) == 3 + 60 and max(row[3] for row in streams) > 5  # shared streams have many revisions

    # Damage the read model (it is not evidence, the owner may), then rebuild it from the log.
    await owner.execute("DELETE FROM audit_resource_heads WHERE resource_id LIKE 'shared-%'")
    await owner.execute("UPDATE audit_resource_heads SET revision = revision + 1, state = NULL")
    await owner.execute("DELETE FROM audit_counts_hourly WHERE tenant = 'acme'")
    await owner.execute("UPDATE audit_counts_hourly SET events = events + 5")
    await owner.execute("DELETE FROM audit_action_counts_hourly WHERE tenant = 'globex'")
    await owner.execute("UPDATE audit_action_counts_hourly SET counts[1] = counts[1] + 1, events = events + 1")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit_service.cli", "rebuild-projections"],
        env={
            "PATH": "/usr/bin:/bin",
            "AUDIT_DATABASE_URL": database.app_url,
            "AUDIT_MIGRATE_DATABASE_URL": database.owner_url,
        },
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"rebuilt projections: 120 events in {len(online)} rows of audit_counts_hourly "
        f"and {len(online_by_action)} rows of audit_action_counts_hourly; {len(streams)} resource streams; "
        "0 alert rules; 0 destinations"
    )
    assert "120/120" in result.stderr  # the progress bar
    assert [tuple(row) for row in await owner.fetch(PROJECTION_ROWS)] == online
    assert [tuple(row) for row in await owner.fetch(ACTION_PROJECTION_ROWS)] == online_by_action
    assert [tuple(row) for row in await owner.fetch(STREAM_ROWS)] == streams


async def test_the_migration_that_adds_the_per_action_projection_counts_the_existing_log(
    publisher, start_worker, owner
):
    await start_worker()
    for i in range(40):
        await publisher.publish(make_event(("acme", "globex")[i % 2], action=("a.create", "b.read")[i % 3 == 0]))

    async def all_stored() -> bool:
        return await owner.fetchval("SELECT count(*) FROM audit_events") == 40

    await eventually(all_stored, what="every event stored")
    online = [tuple(row) for row in await owner.fetch(ACTION_PROJECTION_ROWS)]
    assert sum(row[2] for row in online) == 40

    # As on a database migrated before the projection existed: the migration backfills it from the log.
    await owner.execute(
        "DROP TABLE audit_action_counts_hourly; DROP FUNCTION audit_add_action_counts; "
        "DELETE FROM audit_schema_migrations WHERE version = 3"
    )
    assert [migration.name for migration in await migrate(owner)] == ["action_counts"]
    assert [tuple(row) for row in await owner.fetch(ACTION_PROJECTION_ROWS)] == online
