"""Timing for the experiments and benchmarks: the median of repeated calls after a warm-up.

The first call pays for page faults, lazy initialisation and cold caches, which are not the steady state;
the median resists the outliers of a shared machine better than the mean.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
