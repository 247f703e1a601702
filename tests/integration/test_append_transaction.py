"""The append transaction's edges (store/append.py): it opens and commits its own transaction in the round trip
that locks the log head, or runs as a savepoint of the caller's; a failed append leaves its connection clean."""

from __future__ import annotations

import asyncpg
import pytest
from audit_service.store.append import LogAppender

from ..factories import content_of, make_event, stamp


async def _stored(owner: asyncpg.Connection) -> tuple[int, int, int]:
    return (
        await owner.fetchval("SELECT count(*) FROM audit_events"),
        await owner.fetchval("SELECT count(*) FROM audit_event_ids"),
        await owner.fetchval("SELECT last_position FROM audit_log_head"),
    )


async def test_an_append_inside_the_callers_transaction_is_undone_with_it(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    outer = app.transaction()
    await outer.start()
    result = await LogAppender().append(app, [content_of(stamp(make_event())) for _ in range(3)])
    assert result.appended == 3 and app.is_in_transaction()  # the caller's transaction is still open

    await outer.rollback()

    assert await _stored(owner) == (0, 0, 0)
    assert (await LogAppender().append(app, [content_of(stamp(make_event()))])).appended == 1
    assert not app.is_in_transaction()
    assert await _stored(owner) == (1, 1, 1)


async def test_a_failed_append_rolls_back_and_leaves_its_connection_usable(
    app: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    await owner.execute(
        "CREATE FUNCTION refuse_ids() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
    )
    await owner.execute(
        "CREATE TRIGGER refuse_ids BEFORE INSERT ON audit_event_ids FOR EACH ROW EXECUTE FUNCTION refuse_ids()"
    )
    appender = LogAppender()

    with pytest.raises(asyncpg.RaiseError, match="refused by the test"):
        await appender.append(app, [content_of(stamp(make_event())) for _ in range(3)])

    assert not app.is_in_transaction()
    assert await _stored(owner) == (0, 0, 0)
    await owner.execute("DROP TRIGGER refuse_ids ON audit_event_ids")
    assert (await appender.append(app, [content_of(stamp(make_event())) for _ in range(2)])).appended == 2
    assert await _stored(owner) == (2, 2, 2)
