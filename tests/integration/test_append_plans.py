"""What the append transaction's statements cost does not grow with the log: each reads what its batch
touches by index, never a whole projection (issue 19: the heads of 500 streams were read by hashing the whole
audit_resource_heads table, once per batch)."""

from __future__ import annotations

import asyncpg
from audit_service.store import append


async def _plan(conn: asyncpg.Connection, statement: str, *args: object) -> str:
    rows = await conn.fetch(f"EXPLAIN (COSTS OFF) {statement}", *args)
    return "\n".join(row[0] for row in rows)


async def test_a_batch_reads_its_stream_heads_by_primary_key_however_many_streams_exist(
    owner: asyncpg.Connection,
) -> None:
    # 50,000 streams of 20 tenants (what a year of a busy log holds), and a batch touching 500 of them.
    await owner.execute(
        """
        INSERT INTO audit_resource_heads (tenant, resource_type, resource_id, revision, last_position, state)
        SELECT 'tenant-' || (i % 20), 'cluster', 'res-' || i, 1, i, NULL FROM generate_series(1, 50000) AS i
        """
    )
    await owner.execute("ANALYZE audit_resource_heads")
    keys = [(f"tenant-{i % 20}", "cluster", f"res-{i}") for i in range(1, 50001, 100)]
    columns = [list(column) for column in zip(*keys, strict=True)]

    plan = await _plan(owner, append._READ_UNDER_LOCK, [], [], *columns, None)

    assert "Index Scan using audit_resource_heads_pkey" in plan, plan
    assert "Seq Scan on audit_resource_heads" not in plan, plan
    known = await owner.fetchrow(append._READ_UNDER_LOCK, [], [], *columns, None)
    assert known["stream_indexes"] == list(range(1, len(keys) + 1))
    assert known["stream_positions"] == [int(resource_id.removeprefix("res-")) for _, _, resource_id in keys]
