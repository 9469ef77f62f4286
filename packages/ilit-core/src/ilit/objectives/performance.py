"""``performance``: median latency of one inference on one batch, after a warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, List

from ..objective import Objective

__all__ = ["Performance", "median_latency"]


def median_latency(fn: Callable[[], Any], warmup: int = 3, min_runs: int = 3, max_runs: int = 30,
                   budget_s: float = 1.0, warmup_budget_s: float = 0.25) -> float:
    """Median seconds of ``fn()`` over repeated runs after untimed warm-up runs.

    Warms up with up to ``warmup`` runs (at least one; fewer once ``warmup_budget_s`` is spent), then
    times at least ``min_runs`` and at most ``max_runs`` runs, stopping once ``budget_s`` is spent, so a
    slow model costs a few runs and a fast one gets many.
    """
    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
        if time.perf_counter() - start >= warmup_budget_s:
            break
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Performance(Objective):
    """Lower latency is better. Not the duration of the whole eval function: one batch, timed alone."""

    unit = "ms"

    def measure(self, model: Any, adaptor: Any, inputs: Any) -> float:
        return 1000.0 * median_latency(lambda: adaptor.infer(model, inputs))
