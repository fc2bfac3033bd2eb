"""Wall-clock timing shared by the benchmarks: standard library only, so that a worker process that
must not import JAX (bench_keras_inference.py's PyTorch arm) can use it too."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_seconds(fn: Callable[[], object], calls: int, *, warmup: int = 0) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn()`` (which waits for its result), after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], calls: int, *, warmup: int = 3) -> float:
    """The median of :func:`call_seconds`."""
    return statistics.median(call_seconds(fn, calls, warmup=warmup))
