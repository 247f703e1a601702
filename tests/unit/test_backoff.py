"""Full-jitter backoff: every delay lies in [0, min(cap, base * 2**attempt)], and the ceiling really grows."""

from __future__ import annotations

import random

import pytest
from audit_service.core.backoff import backoff_ceiling, backoff_delay
from hypothesis import given
from hypothesis import strategies as st


@given(
    attempt=st.integers(min_value=0, max_value=5000),
    base=st.floats(min_value=1e-3, max_value=60),
    cap=st.floats(min_value=0, max_value=3600),
    seed=st.integers(),
)
def test_a_delay_is_between_zero_and_the_capped_exponential(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    # past 2**60 any base here exceeds any cap here (and 2.0**attempt would overflow a float)
    assert 0 <= delay <= (cap if attempt > 60 else min(cap, base * 2**attempt))


def test_the_ceiling_doubles_until_the_cap() -> None:
    assert [backoff_ceiling(n, base=0.5, cap=10) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_delays_are_spread_over_the_whole_range_not_a_fixed_value() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, base=1, cap=100, rng=rng) for _ in range(200)]
    assert min(delays) < 2 and max(delays) > 6 and all(0 <= d <= 8 for d in delays)


@pytest.mark.parametrize(("attempt", "base", "cap"), [(-1, 1, 1), (0, 0, 1), (0, 1, -1), (0, float("inf"), 1)])
def test_bad_arguments_are_refused(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, base=base, cap=cap, rng=random.Random())
