"""Migration 0005 on a log stored before resource streams existed: the streams count the old events, the next
event continues their revisions with change.before filled from the old state, and the old events still verify."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import orjson
from audit.v1 import event_pb2
from audit_service.core.records import CHANGE_BEFORE_INDEX, GENESIS_HASH, LOG_COLUMNS, seal
from audit_service.store.append import LogAppender
from audit_service.store.migrate import migrate
from audit_service.store.projections import rebuild_projections
from audit_service.store.verify import verify_log

from ..conftest import run_as_superuser
from ..factories import content_of, make_event, stamp

HEADS = "SELECT * FROM audit_resource_heads ORDER BY tenant, resource_type, resource_id"


async def _store_as_before_streams(conn: asyncpg.Connection, events: list[event_pb2.AuditEvent]) -> None:
    """What the appender of migrations 1-4 stored: version 1 hashes, no stream revision."""
    recorded_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    chain: dict[str, bytes] = {}
    rows, ids = [], []
    for position, event in enumerate(events, start=1):
        digest, row = seal(position, recorded_at, content_of(stamp(event)), chain.get(event.tenant, GENESIS_HASH))
        chain[event.tenant] = digest
        revision_at = LOG_COLUMNS.index("stream_revision")
        rows.append(row[:revision_at] + row[revision_at + 1 :])
        ids.append((uuid.UUID(event.event_id), position, recorded_at))
    columns = [name for name in LOG_COLUMNS if name != "stream_revision"]
    await conn.copy_records_to_table("audit_events", records=rows, columns=columns)
    await conn.copy_records_to_table("audit_event_ids", records=ids, columns=["event_id", "position", "recorded_at"])
    await conn.execute("UPDATE audit_log_head SET last_position = $1, last_recorded_at = $2", len(events), recorded_at)
    for tenant, digest in chain.items():
        last = max(i for i, event in enumerate(events, start=1) if event.tenant == tenant)
        await conn.execute("INSERT INTO audit_chain_heads VALUES ($1, $2, $3)", tenant, last, digest)


async def test_streams_continue_the_events_stored_before_they_existed(postgres) -> None:
    name = f"m_{uuid.uuid4().hex[:12]}"
    await run_as_superuser(postgres, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(postgres.url(name))
    try:
        await migrate(conn, up_to=4)
        old = []
        for i, replicas in enumerate((1, 2, 3)):
            event = make_event("acme", action="deployment.update")
            event.resource.id = "web"
            event.resource.type = "deployment"
            event.change.after.Clear()
            event.change.after.update({"replicas": replicas, "image": "web:1"})
            if i == 2:  # stored before masking existed: the secret is in the old log for good, never copied on
                event.change.after.update({"db": {"password": "hunter2"}})
                event.change.before.update({"replicas": 2, "image": "web:1"})
            old.append(event)
        old.append(make_event("acme", action="login"))  # a stream of its own (key-n), no state change recorded
        old[-1].change.Clear()
        await _store_as_before_streams(conn, old)

        assert [migration.version for migration in await migrate(conn, up_to=5)] == [5]

        heads = {(row["resource_type"], row["resource_id"]): row for row in await conn.fetch(HEADS)}
        web = heads[("deployment", "web")]
        assert (web["revision"], web["last_position"]) == (3, 3)
        assert orjson.loads(web["state"]) == {"replicas": 3, "image": "web:1", "db": {"password": "hunter2"}}
        login = heads[("api_key", old[-1].resource.id)]
        assert (login["revision"], login["state"]) == (1, None)
        assert [tuple(row) for row in await conn.fetch("SELECT * FROM audit_resource_baseline ORDER BY 1, 2, 3")] == [
            tuple(row) for row in await conn.fetch(HEADS)
        ]

        assert {6, 7} <= {migration.version for migration in await migrate(conn)}  # the releases after it
        update = make_event("acme", action="deployment.update")
        update.resource.id, update.resource.type = "web", "deployment"
        update.change.after.Clear()
        update.change.after.update({"replicas": 5, "image": "web:2"})
        await LogAppender().append(conn, [content_of(stamp(update))])

        stored = await conn.fetchrow(
            "SELECT stream_revision, change_before FROM audit_events WHERE event_id = $1", uuid.UUID(update.event_id)
        )
        assert stored["stream_revision"] == 4
        masked_state = {"replicas": 3, "image": "web:1", "db": {"password": "[MASKED]"}}
        assert orjson.loads(stored["change_before"]) == masked_state
        assert content_of(update)[CHANGE_BEFORE_INDEX] is None  # the producer sent none: the service filled it
        assert await conn.fetchval("SELECT count(*) FROM audit_events WHERE stream_revision IS NULL") == 4

        report = await verify_log(conn)
        assert report.ok, report.first_break
        assert report.checked == 5

        online = [tuple(row) for row in await conn.fetch(HEADS)]
        await conn.execute("UPDATE audit_resource_heads SET revision = 99, state = NULL")
        await rebuild_projections(conn)
        assert [tuple(row) for row in await conn.fetch(HEADS)] == online

        # The rest of the migrations on this log (0007 checked and indexed its positions); appends go on.
        await LogAppender().append(conn, [content_of(stamp(make_event("globex")))])
        report = await verify_log(conn)
        assert (report.ok, report.checked, report.positions) == (True, 6, (1, 6)), report.first_break
    finally:
        await conn.close()
        await run_as_superuser(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
