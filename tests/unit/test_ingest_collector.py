"""The collector setting of the ingest worker (ingest/worker.py, _collector_for_batches): a pass of the youngest
generation every 50,000 allocations while a worker runs, and the process's own setting back once none runs. Workers
of one process (the dev stack, tests running two in-process workers) start and stop in any order."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from audit_service.ingest.worker import _GC_THRESHOLD, _collector_for_batches

PROCESS_THRESHOLD = (700, 10, 10)


@pytest.fixture(autouse=True)
def process_threshold() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*PROCESS_THRESHOLD)
    yield
    gc.set_threshold(*before)


def test_one_worker_raises_the_threshold_and_gives_it_back() -> None:
    with _collector_for_batches():
        assert gc.get_threshold() == (_GC_THRESHOLD, *PROCESS_THRESHOLD[1:])
    assert gc.get_threshold() == PROCESS_THRESHOLD


def test_nested_workers_give_the_threshold_back() -> None:
    with _collector_for_batches(), _collector_for_batches():
        assert gc.get_threshold()[0] == _GC_THRESHOLD
    assert gc.get_threshold() == PROCESS_THRESHOLD


def test_overlapping_workers_keep_the_raised_threshold_while_one_runs_and_give_it_back_after_the_last() -> None:
    first, second = _collector_for_batches(), _collector_for_batches()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first worker stops; the second still runs
    still_running = gc.get_threshold()
    second.__exit__(None, None, None)
    assert (still_running[0], gc.get_threshold()) == (_GC_THRESHOLD, PROCESS_THRESHOLD)
