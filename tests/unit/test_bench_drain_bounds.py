"""bench/ingest_throughput.py's DrainBounds: the two ceilings computed as its docstring says, from statement texts as
pg_stat_statements shows them for the append's real SQL (store/append.py), so a change to the append's
statements that the benchmark's prefixes no longer match fails here rather than printing a wrong ceiling."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from audit_service.store import append
from audit_service.store.append import STORED_COLUMNS

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ingest_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def shown(sql: str) -> str:
    """A statement as statement_statistics reports it: pg_stat_statements' text (trimmed), whitespace runs as one
    space, its first 70 characters."""
    return re.sub(r"\s+", " ", sql.strip())[:70]


def copy_statement(table: str, columns: tuple[str, ...]) -> str:
    """asyncpg's copy_records_to_table statement."""
    quoted = ", ".join('"' + column + '"' for column in columns)
    return shown(f'COPY "{table}"({quoted}) FROM STDIN (FORMAT binary)')


def statement(text: str, ms_per_batch: float) -> dict:
    return {"statement": text, "calls": 100, "seconds": 1.0, "ms_per_batch": ms_per_batch}


SERIALIZED = {  # the append transaction's statements after the lock, PostgreSQL's ms per 500 events
    "BEGIN": 0.5,
    shown(append._READ_UNDER_LOCK): 1.0,
    copy_statement("audit_events", STORED_COLUMNS): 20.0,
    copy_statement("audit_event_ids", ("event_id", "position", "recorded_at")): 2.0,
    shown(append._MOVE_HEADS_AND_COUNT): 5.0,
    "COMMIT": 1.5,
}
OUTSIDE = {
    shown(append._LOCK_HEAD): 7.0,  # waiting for the lock, not work
    "SELECT audit_clean_search_pending()": 50.0,  # the merge beside the appends, not under the lock
    "SELECT audit_ensure_partition($1)": 0.2,
    "WITH RECURSIVE typeinfo_tree( oid, ns, name, kind, basetype, elemtype,": 0.3,
}
CPU = {
    "ingest worker(s)": 3.0,
    "nats-server": 1.0,
    "postgres (all backends)": 4.0,
    "benchmark (this process)": 11.0,  # the load generator is no part of the service
    "everything else": 5.0,
}


def test_the_cpu_ceiling_is_the_cores_over_the_services_cpu_per_drained_event(bench) -> None:
    bounds = bench.drain_bounds(CPU, 100_000, 2, [statement(text, ms) for text, ms in SERIALIZED.items()])
    assert bounds.cpu_us_per_event == {"ingest worker(s)": 30.0, "nats-server": 10.0, "postgres (all backends)": 40.0}
    assert bounds.cpu_events_per_second == 25_000.0  # 2 cores / 80 µs


def test_the_serialized_ceiling_counts_exactly_the_statements_under_the_heads_lock(bench) -> None:
    statements = [statement(text, ms) for text, ms in {**SERIALIZED, **OUTSIDE}.items()]
    bounds = bench.drain_bounds(CPU, 100_000, 2, statements)
    assert bounds.serialized_ms_per_batch == 30.0
    assert bounds.serialized_events_per_second == round(bench.WORKER_BATCH_SIZE / 0.030, 1)
    for text in SERIALIZED:
        alone = bench.drain_bounds(CPU, 100_000, 2, [statement(text, 4.0)])
        assert alone.serialized_ms_per_batch == 4.0, f"not counted: {text!r}"
    for text in OUTSIDE:
        alone = bench.drain_bounds(CPU, 100_000, 2, [statement(text, 4.0)])
        assert alone.serialized_ms_per_batch == 0.0, f"counted: {text!r}"


def test_no_statement_under_the_lock_gives_no_serialized_ceiling_rather_than_a_division_by_zero(bench) -> None:
    bounds = bench.drain_bounds(CPU, 1_000, 4, [statement(text, ms) for text, ms in OUTSIDE.items()])
    assert (bounds.serialized_ms_per_batch, bounds.serialized_events_per_second) == (0.0, 0.0)
    assert bounds.cpu_events_per_second == round(4 / (8.0 / 1_000), 1)
