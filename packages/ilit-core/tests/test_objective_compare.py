"""Objective.compare and Comparison: the default divides two measurements; performance times the candidate and
the FP32 model interleaved, in rounds, on a fake clock (no wall-clock assertion anywhere)."""

import contextlib
import json
import logging
import math

import numpy as np
import pytest

import ilit
from ilit import Comparison, Objective
from ilit.objective import ratio_of
from ilit.objectives import ModelSize, Performance, saved_size
from ilit.objectives.performance import THREADS_ENV, interleaved, median_interval, timing_threads
from ilit.space import TuningSpace
from ilit_toy import ToyAdaptor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedAdaptor(ToyAdaptor):
    """``infer`` advances the fake clock by ``cost(model, now)`` seconds; models are plain names here."""

    def __init__(self, clock, cost):
        super().__init__(ilit.load_config({}))
        self.clock, self.cost = clock, cost
        self.calls = []
        self.contexts = []

    def infer(self, model, inputs):
        self.calls.append(model)
        self.clock.now += self.cost(model, self.clock.now)
        return None

    @contextlib.contextmanager
    def timing_context(self, threads):
        self.contexts.append(threads)
        yield threads


COST = {"int8": 0.001, "fp32": 0.004}


def runs(calls):
    """Run-length encoding of a call sequence: [(model, how many in a row), ...]."""
    out = []
    for c in calls:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return [tuple(r) for r in out]


def test_constant_costs_give_the_exact_ratio_in_the_minimum_rounds():
    clock = FakeClock()
    ad = TimedAdaptor(clock, lambda m, now: COST[m])
    c = Performance(threads=1, clock=clock).compare("int8", "fp32", ad, None)
    assert isinstance(c, Comparison)
    assert c.ratio == pytest.approx(0.25, rel=1e-9) and c.spread == pytest.approx(0.0, abs=1e-9)
    assert c.baseline == pytest.approx(4.0, rel=1e-9) and c.value == pytest.approx(1.0, rel=1e-9)  # ms
    assert c.value / c.baseline == pytest.approx(c.ratio, rel=1e-12)  # the contract: ratio = value / baseline
    assert c.reliable and c.rounds == 6 and c.threads == 1 and ad.contexts == [1]
    # warm-up alternates single runs, then blocks of ~5 ms: 5 int8 runs, 2 fp32 runs, the order flipping each round
    seq = runs(ad.calls)
    assert seq[:4] == [("int8", 1), ("fp32", 1), ("int8", 1), ("fp32", 1)]
    assert seq[4:] == [("int8", 5), ("fp32", 4), ("int8", 10), ("fp32", 4), ("int8", 10), ("fp32", 4), ("int8", 5)]


def test_load_arriving_mid_way_moves_separate_measurements_but_not_the_interleaved_ratio():
    """A 10x slowdown from t=40 ms on (another job starts): measured one after the other (the candidate takes
    ~35 ms), the FP32 model is timed under load and the candidate not; interleaved, both sides of each round
    see the same load."""
    def cost(model, now):
        return COST[model] * (10.0 if now >= 0.04 else 1.0)

    clock = FakeClock()
    perf = Performance(threads=1, clock=clock)
    separate = Objective.compare(perf, "int8", "fp32", TimedAdaptor(clock, cost), None)  # measure each, divide
    assert separate.ratio < 0.25 / 5  # the FP32 side was timed under load: the candidate looks 10x too fast

    for start in (0.0, 0.02, 0.05):  # the load arriving during the rounds, or under load throughout
        clock.now = start
        c = perf.compare("int8", "fp32", TimedAdaptor(clock, cost), None)
        assert c.ratio == pytest.approx(0.25, rel=0.01), start


def test_noisy_rounds_get_more_rounds_until_the_spread_is_narrow():
    rng = np.random.default_rng(0)

    def cost(model, now):
        return COST[model] * float(np.exp(rng.normal(0.0, 0.3)))  # every run +-30%

    clock = FakeClock()
    perf = Performance(threads=1, clock=clock, budget_s=30.0, max_rounds=1000)
    c = perf.compare("int8", "fp32", TimedAdaptor(clock, cost), None)
    assert c.rounds > 6 and c.reliable and c.spread <= 0.05
    assert c.ratio == pytest.approx(0.25, rel=0.1)


def test_a_machine_too_busy_is_reported_unreliable_within_the_budget(caplog):
    rng = np.random.default_rng(1)

    def cost(model, now):
        return COST[model] * float(np.exp(rng.normal(0.0, 2.0)))  # a wildly loaded machine

    clock = FakeClock()
    perf = Performance(threads=1, clock=clock, budget_s=0.5)
    with caplog.at_level(logging.INFO, logger="ilit"):
        c = perf.compare("int8", "fp32", TimedAdaptor(clock, cost), None)
    assert not c.reliable and c.spread > 0.05 and c.rounds >= 6
    assert "too busy for a reliable figure" in caplog.text and "load average" in caplog.text
    assert "unreliable" in c.describe()


def test_rounds_stop_at_max_rounds():
    rng = np.random.default_rng(2)
    clock = FakeClock()
    res = interleaved(lambda: setattr(clock, "now", clock.now + float(rng.uniform(1, 3))),
                      lambda: setattr(clock, "now", clock.now + float(rng.uniform(1, 3))),
                      min_rounds=4, max_rounds=9, budget_s=1e9, clock=clock)
    assert res.rounds == 9 and len(res.ratios) == 9


def test_interleaved_checks_its_round_limits():
    with pytest.raises(ValueError, match="min_rounds <= max_rounds"):
        interleaved(lambda: None, lambda: None, min_rounds=5, max_rounds=3)


def test_median_interval_uses_order_statistics():
    assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0, 6.0]) == (3.5, 1.0, 6.0)  # six values or fewer: the range
    med, lo, hi = median_interval([float(i) for i in range(100)])
    assert (med, lo, hi) == (49.5, 39.0, 60.0)  # order statistics 40 and 61 (1-based) for n = 100
    with pytest.raises(ValueError):
        median_interval([])


def test_measure_and_compare_time_inside_the_adaptors_timing_context(monkeypatch):
    clock = FakeClock()
    ad = TimedAdaptor(clock, lambda m, now: COST[m])
    perf = Performance(threads=2, clock=clock)
    assert perf.measure("fp32", ad, None) == pytest.approx(4.0)
    assert perf.compare("int8", "fp32", ad, None).threads == 2
    assert ad.contexts == [2, 2]
    assert Performance(threads=None, clock=clock).compare("int8", "fp32", ad, None).threads is None


def test_timing_threads_default_and_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert timing_threads() == 1 and Performance().threads == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert Performance().threads == 3
    monkeypatch.setenv(THREADS_ENV, "0")  # leave the framework's own setting alone
    assert Performance().threads is None
    for bad in ("-1", "two"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"{THREADS_ENV}='{bad}': expected an integer >= 1"):
            Performance()


def test_the_base_adaptor_timing_context_changes_nothing():
    with ilit.Adaptor.timing_context(ToyAdaptor(ilit.load_config({})), 1) as threads:
        assert threads is None


def test_the_default_compare_measures_each_and_divides(easy_toy, conf):
    model, data = easy_toy
    tuner = ilit.Tuner(conf())
    adaptor = ToyAdaptor(tuner.config)
    space = TuningSpace.build(adaptor.query_fw_capability(model), tuner.config)
    q = adaptor.quantize(space.model_wise_configs()[0], model, data)
    c = ModelSize().compare(q, model, adaptor, data[0][0])
    assert c.value == saved_size(q, adaptor) and c.baseline == saved_size(model, adaptor)
    assert c.ratio == c.value / c.baseline
    assert c.spread == 0.0 and c.reliable and c.rounds == 0 and c.threads is None


def test_comparison_is_exported_json_safe_and_described():
    assert ilit.Comparison is Comparison and "Comparison" in ilit.__all__
    c = Comparison(value=1.0, baseline=4.0, ratio=0.25, spread=0.031, reliable=True, rounds=12, threads=1)
    assert json.loads(json.dumps(c.as_dict())) == {"value": 1.0, "baseline": 4.0, "ratio": 0.25, "spread": 0.031,
                                                   "reliable": True, "rounds": 12, "threads": 1}
    assert c.describe() == "ratio 0.25 +- 3.1% (12 rounds, 1 thread)"
    assert Comparison(2.0, 1.0, 2.0).describe() == "ratio 2"


def test_ratio_of_is_always_defined():
    assert ratio_of(1.0, 4.0) == 0.25 and ratio_of(0.0, 0.0) == 1.0 and ratio_of(1.0, 0.0) == math.inf
