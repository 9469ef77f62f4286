"""``performance``: inference latency of one batch, and a candidate's latency ratio to FP32 measured interleaved.

On a shared machine a latency measured at one moment and another measured minutes later can differ
many times over, so :meth:`Performance.compare` times the candidate and the FP32 model in alternating
rounds (A B, B A, A B, ...) in the same window. Each round gives one ratio (candidate per-run time
over FP32 per-run time); load that comes and goes slows both sides of a round alike. The result is
the median of the per-round ratios, and its spread is the relative half-width of a ~95% confidence
interval of that median (from the order statistics of the ratios), which narrows as rounds are added.
While the spread is wider than ``max_spread`` more rounds run, within ``budget_s``; if it is still
too wide the comparison is marked unreliable and a warning says the machine is too busy.

Clock: on 1 thread, runs are timed in process CPU time (``time.process_time``), which other processes' load
does not inflate: on an oversubscribed machine a 150 ms run is preempted many times while a 0.5 ms run mostly
is not, so wall-clock ratios between a slow and a fast model drift with the load (measured: 0.12 quiet, 0.004
to 0.12 under load for the same pair). On one otherwise idle core CPU time equals latency. With more threads
(or an adaptor that cannot set them) CPU time would add the threads up, so wall time is used. Budgets are
always wall-clock seconds.

Threads: timing runs with 1 intra-op thread by default (``Adaptor.timing_context``; the PyTorch
adaptor sets ``torch.set_num_threads`` and restores it afterwards). On 2 shared cores, 2-thread OpenMP
timings swung 20x while 1-thread timings stayed within a few percent, and a ratio of two 1-thread
timings ranks configs the same way. ``ILIT_TIMING_THREADS=N`` times with N threads instead, and
``ILIT_TIMING_THREADS=0`` leaves the framework's own setting alone (e.g. to time as you deploy). The
count used is recorded in each :class:`ilit.Comparison` (None when the adaptor cannot set it:
TensorFlow and MXNet fix their thread pools at start-up).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

from ..objective import Comparison, Objective, ratio_of

__all__ = ["Performance", "median_latency", "interleaved", "Interleaved", "median_interval", "timing_threads",
           "THREADS_ENV"]

log = logging.getLogger(__name__)

#: the environment variable that sets the thread count timing uses (0: the framework's own setting)
THREADS_ENV = "ILIT_TIMING_THREADS"
DEFAULT_THREADS = 1

Clock = Callable[[], float]


def timing_threads(default: int = DEFAULT_THREADS) -> Optional[int]:
    """The thread count timing uses: ``$ILIT_TIMING_THREADS`` if set (0: None, leave it alone), else ``default``."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"{THREADS_ENV}={raw!r}: expected an integer >= 1 (the threads timing uses), or 0 to leave "
                         "the framework's own thread setting alone")
    return n or None


def median_latency(fn: Callable[[], Any], warmup: int = 3, min_runs: int = 3, max_runs: int = 30,
                   budget_s: float = 1.0, warmup_budget_s: float = 0.25, clock: Clock = time.perf_counter,
                   budget_clock: Optional[Clock] = None) -> float:
    """Median seconds of ``fn()`` over repeated runs after untimed warm-up runs.

    Warms up with up to ``warmup`` runs (at least one; fewer once ``warmup_budget_s`` is spent), then
    times at least ``min_runs`` and at most ``max_runs`` runs, stopping once ``budget_s`` is spent, so a
    slow model costs a few runs and a fast one gets many. ``clock`` times the runs; the budgets are spent on
    ``budget_clock`` (default: ``clock``), so runs timed in CPU time still end within a wall-clock budget.
    """
    wall = budget_clock or clock
    start = wall()
    for _ in range(max(1, warmup)):
        fn()
        if wall() - start >= warmup_budget_s:
            break
    times: List[float] = []
    start = wall()
    while len(times) < max_runs and (len(times) < min_runs or wall() - start < budget_s):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def median_interval(values: List[float], z: float = 1.96) -> Tuple[float, float, float]:
    """(median, low, high): the median of ``values`` and a distribution-free ~95% confidence interval for it.

    The interval is bounded by the order statistics j = floor(n/2 - z*sqrt(n)/2) and
    k = ceil(1 + n/2 + z*sqrt(n)/2) (1-based, clamped to the data), so it needs no assumption about how
    the noise is distributed; with 6 values or fewer it is the whole range.
    """
    if not values:
        raise ValueError("median_interval needs at least one value")
    s = sorted(values)
    n = len(s)
    half = z * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half) - 1)
    hi = min(n - 1, math.ceil(1 + n / 2 + half) - 1)
    return statistics.median(s), s[lo], s[hi]


@dataclass(frozen=True)
class Interleaved:
    """What :func:`interleaved` measured: per-run seconds of A and B (medians over rounds), the median of the
    per-round ratios A/B, its relative spread, and the per-round ratios themselves."""

    seconds_a: float
    seconds_b: float
    ratio: float
    spread: float
    ratios: Tuple[float, ...]
    elapsed_s: float

    @property
    def rounds(self) -> int:
        return len(self.ratios)


def _block(fn: Callable[[], Any], reps: int, clock: Clock) -> float:
    t0 = clock()
    for _ in range(reps):
        fn()
    return (clock() - t0) / reps


def interleaved(run_a: Callable[[], Any], run_b: Callable[[], Any], *, min_rounds: int = 6, max_rounds: int = 200,
                max_spread: float = 0.05, budget_s: float = 3.0, block_s: float = 0.005, warmup: int = 2,
                warmup_budget_s: float = 0.5, max_reps: int = 10_000, clock: Clock = time.perf_counter,
                budget_clock: Optional[Clock] = None) -> Interleaved:
    """Time ``run_a`` against ``run_b`` in interleaved rounds and return the robust ratio A/B with its spread.

    After ``warmup`` untimed runs of each, every round times a block of A and a block of B back to back
    (the order alternates: A B, then B A, ...); a block repeats its function so it lasts about
    ``block_s``, so timer overhead does not dominate fast models. At least ``min_rounds`` rounds run; more
    follow while the spread (the relative half-width of the median's confidence interval) exceeds
    ``max_spread``, until ``max_rounds`` rounds or ``budget_s`` seconds of rounds. ``clock`` times the blocks;
    the budgets are spent on ``budget_clock`` (default: ``clock``).
    """
    wall = budget_clock or clock
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"interleaved: need 1 <= min_rounds <= max_rounds; got {min_rounds} and {max_rounds}")
    # warm-up: lazy initialisation, caches, JIT; the last warm-up run of each sizes its blocks
    start = wall()
    last = {"a": 0.0, "b": 0.0}
    for i in range(max(1, warmup)):
        for key, fn in (("a", run_a), ("b", run_b)):
            t0 = clock()
            fn()
            last[key] = clock() - t0
        if wall() - start >= warmup_budget_s:
            break
    reps = {k: max(1, min(max_reps, math.ceil(block_s / v))) if v > 0 else max_reps for k, v in last.items()}
    per_a: List[float] = []
    per_b: List[float] = []
    ratios: List[float] = []
    spread = math.inf
    start = wall()
    while True:
        if len(ratios) % 2 == 0:
            a = _block(run_a, reps["a"], clock)
            b = _block(run_b, reps["b"], clock)
        else:
            b = _block(run_b, reps["b"], clock)
            a = _block(run_a, reps["a"], clock)
        per_a.append(a)
        per_b.append(b)
        ratios.append(ratio_of(a, b))
        n = len(ratios)
        if n < min_rounds:
            continue
        med, lo, hi = median_interval(ratios)
        spread = (hi - lo) / (2 * med) if med > 0 and math.isfinite(hi - lo) else (0.0 if hi == lo else math.inf)
        if spread <= max_spread or n >= max_rounds or wall() - start >= budget_s:
            break
    seconds_b = statistics.median(per_b)
    return Interleaved(seconds_a=statistics.median(per_a), seconds_b=seconds_b, ratio=med, spread=spread,
                       ratios=tuple(ratios), elapsed_s=wall() - start)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "unknown"


class Performance(Objective):
    """Lower latency is better. One batch, timed alone (not the whole eval function), with the timing threads.

    :meth:`measure` is the median latency in ms; :meth:`compare` times the candidate against the FP32 model
    interleaved and gives their ratio with its spread (see the module docstring). ``threads``: -1 (the
    default) takes ``$ILIT_TIMING_THREADS`` or 1, None leaves the framework's setting alone. ``clock`` (for
    tests) replaces both the timing clock and the budget clock; by default runs on 1 thread are timed in
    process CPU time (``time.process_time``) and others in wall time, with budgets in wall time.
    """

    unit = "ms"

    def __init__(self, threads: Optional[int] = -1, *, max_spread: float = 0.05, budget_s: float = 3.0,
                 min_rounds: int = 6, max_rounds: int = 200, clock: Optional[Clock] = None) -> None:
        self.threads = timing_threads() if threads == -1 else threads
        self.max_spread = max_spread
        self.budget_s = budget_s
        self.min_rounds = min_rounds
        self.max_rounds = max_rounds
        self.clock = clock

    def clocks(self, threads: Optional[int]) -> Tuple[Clock, Clock]:
        """(timing clock, budget clock) for timing on ``threads`` threads (None: unknown)."""
        if self.clock is not None:
            return self.clock, self.clock
        return (time.process_time if threads == 1 else time.perf_counter), time.perf_counter

    def measure(self, model: Any, adaptor: Any, inputs: Any) -> float:
        with adaptor.timing_context(self.threads) as threads:
            clock, wall = self.clocks(threads)
            return 1000.0 * median_latency(lambda: adaptor.infer(model, inputs), clock=clock, budget_clock=wall)

    def compare(self, model: Any, baseline_model: Any, adaptor: Any, inputs: Any) -> Comparison:
        """Candidate latency over FP32 latency, timed interleaved in the same window, with its spread."""
        with adaptor.timing_context(self.threads) as threads:
            clock, wall = self.clocks(threads)
            res = interleaved(lambda: adaptor.infer(model, inputs), lambda: adaptor.infer(baseline_model, inputs),
                              min_rounds=self.min_rounds, max_rounds=self.max_rounds, max_spread=self.max_spread,
                              budget_s=self.budget_s, clock=clock, budget_clock=wall)
        reliable = res.spread <= self.max_spread
        if not reliable:  # the tuner warns per trial; this says how hard the objective tried
            log.info("performance: the latency ratio %.3g varies by +-%.0f%% over %d interleaved rounds (%.1f s; "
                     "trusted up to +-%.0f%%): the machine is too busy for a reliable figure (load average %s)",
                     res.ratio, 100 * res.spread, res.rounds, res.elapsed_s, 100 * self.max_spread, _load())
        baseline_ms = 1000.0 * res.seconds_b
        # value = ratio x baseline, so value / baseline is exactly the robust ratio
        return Comparison(value=res.ratio * baseline_ms, baseline=baseline_ms, ratio=res.ratio, spread=res.spread,
                          reliable=reliable, rounds=res.rounds, threads=threads)
