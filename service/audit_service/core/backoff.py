"""How long to wait before retrying a delivery. Pure: the caller passes the random source.

Exponential backoff with "full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): the n-th
retry waits a uniformly random time in [0, min(cap, base * 2**n)]. The randomness spreads the retries of many
destinations that failed together (a receiver back from an outage) instead of bringing them back in lockstep,
and of the usual variants it does the least total work for the same spread.
"""

from __future__ import annotations

import math
import random


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The longest wait before retry number `attempt` (0 for the first retry): min(cap, base * 2**attempt)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if not (base > 0 and cap >= 0 and math.isfinite(base) and math.isfinite(cap)):
        raise ValueError(f"backoff needs a finite base > 0 and cap >= 0, not base={base}, cap={cap}")
    try:
        return min(cap, math.ldexp(base, attempt))
    except OverflowError:  # base * 2**attempt beyond a float: far past any cap
        return cap


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """A random wait in [0, min(cap, base * 2**attempt)] seconds."""
    return rng.uniform(0.0, backoff_ceiling(attempt, base=base, cap=cap))
