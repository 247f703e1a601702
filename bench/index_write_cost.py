"""What the query indexes cost the write path: raw COPY into the log with and without them.

On a real embedded PostgreSQL (durable: fsync on, as in production), the same N log rows (built by the
service's own code, realistic shape, see query_latency.py) are COPYed into audit_events 500 rows per
transaction (as the ingest worker appends) in three freshly migrated databases:

1. with every index of the schema;
2. without the GIN trigram index that serves free-text search (audit_events_search);
3. without it and the five query btrees of migration 0002 (tenant+action/actor/resource, tenant+time, trace).

Each variant runs --runs times (fresh database each time); the median rows/s is printed with every run.
This is the ceiling the ingest benchmark's end-to-end rate is compared to, split by what pays for reads.

Usage: .venv/bin/python bench/index_write_cost.py [--events 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from audit_service.core.records import GENESIS_HASH, STORED_COLUMNS, seal_canonical
from audit_service.devstack.postgres import EmbeddedPostgres
from audit_service.devstack.processes import free_port
from audit_service.store.migrate import migrate
from query_latency import DAYS, catalog, contents  # the same realistic rows (bench/ is the script's path)

ROWS_PER_TRANSACTION = 500
SEARCH_INDEX = ("audit_events_search",)
QUERY_BTREES = (
    "audit_events_tenant_action",
    "audit_events_tenant_actor",
    "audit_events_tenant_resource",
    "audit_events_tenant_occurred",
    "audit_events_trace",
)
VARIANTS = {
    "every index": (),
    "without the search GIN": SEARCH_INDEX,
    "without the GIN and query btrees": SEARCH_INDEX + QUERY_BTREES,
}


def build_rows(count: int) -> list[tuple]:
    rng = random.Random(1)
    cat = catalog(rng)
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS)).replace(microsecond=0)
    heads: dict[str, bytes] = {}
    rows = []
    for position, (recorded_at, content) in enumerate(contents(count, start, rng, cat), start=1):
        canonical, digest, row = seal_canonical(position, recorded_at, content, heads.get(content[1], GENESIS_HASH))
        heads[content[1]] = digest
        rows.append((*row, len(canonical)))
    return rows


async def copy_rate(postgres: EmbeddedPostgres, database: str, dropped: Sequence[str], rows: list[tuple]) -> float:
    admin = await asyncpg.connect(postgres.url("postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    conn = await asyncpg.connect(postgres.url(database))
    try:
        await migrate(conn)
        for index in dropped:
            await conn.execute(f"DROP INDEX {index}")
        month = (dt.datetime.now(dt.UTC) - dt.timedelta(days=DAYS + 31)).replace(day=1)
        while month <= dt.datetime.now(dt.UTC) + dt.timedelta(days=32):
            await conn.execute("SELECT audit_ensure_partition($1)", month)
            month = (month + dt.timedelta(days=32)).replace(day=1)
        started = time.perf_counter()
        for low in range(0, len(rows), ROWS_PER_TRANSACTION):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "audit_events", records=rows[low : low + ROWS_PER_TRANSACTION], columns=STORED_COLUMNS
                )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def benchmark(args: argparse.Namespace) -> None:
    print(f"building {args.events:,} log rows ...", flush=True)
    rows = build_rows(args.events)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="audit-index-cost-") as directory:
        postgres = EmbeddedPostgres(Path(directory) / "pg", port=free_port())
        postgres.start()
        try:
            for run in range(args.runs):
                for number, (name, dropped) in enumerate(VARIANTS.items()):
                    rate = await copy_rate(postgres, f"run{run}_{number}", dropped, rows)
                    rates[name].append(rate)
                    print(f"  run {run + 1}: {name:34s} {rate:9,.0f} rows/s", flush=True)
        finally:
            postgres.stop()
    print("=" * 100)
    print(f"index_write_cost: {args.events:,} rows COPYed {ROWS_PER_TRANSACTION} per transaction, fsync on, 2 cores")
    baseline = statistics.median(rates["every index"])
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{value:,.0f}" for value in values)
        print(f"  {name:34s} median {median:9,.0f} rows/s  ({median / baseline:.2f}x)   runs: {runs}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="rows per COPY (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (default 3)")
    asyncio.run(benchmark(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
