"""The built-in objectives measure what they claim: latency of inference, native peak memory, saved size."""

import time

import numpy as np
import pytest

import ilit
from ilit import registry
from ilit.objectives import Footprint, ModelSize, Performance, saved_size
from ilit.objectives.footprint import peak_memory
from ilit.objectives.performance import median_latency
from ilit.space import TuningSpace
from ilit_toy import ToyAdaptor, make_dataset, make_model


class SleepyAdaptor(ToyAdaptor):
    """Inference that takes a known time, to check what is timed."""

    def infer(self, model, inputs):
        time.sleep(0.01)
        return model(inputs)


def test_performance_times_one_inference_not_the_eval_function(easy_toy):
    model, data = easy_toy
    ms = Performance().measure(model, SleepyAdaptor(ilit.load_config({})), data[0][0])
    assert 10.0 <= ms < 1000.0  # at least the 10 ms sleep; the unit is milliseconds


def test_median_latency_warms_up_and_repeats():
    calls = []
    median_latency(lambda: calls.append(1), warmup=3, min_runs=5, max_runs=7, budget_s=10.0)
    assert len(calls) == 3 + 7


def test_median_latency_spends_few_runs_on_a_slow_model():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.05)

    median_latency(slow, warmup=3, min_runs=3, max_runs=30, budget_s=0.01, warmup_budget_s=0.01)
    assert len(calls) == 1 + 3  # one warm-up run and the minimum of timed runs, once the budgets are spent


def test_peak_memory_sees_native_allocations():
    n = 64 * 1024 * 1024  # 64 MiB of numpy buffer, written so the pages are resident

    def alloc():
        a = np.ones(n // 8)
        return float(a[-1])

    assert peak_memory(alloc) >= 0.8 * n
    assert peak_memory(lambda: None) < 0.25 * n


def test_modelsize_is_the_saved_bytes_and_int8_is_smaller(easy_toy, conf):
    model, data = easy_toy
    tuner = ilit.Tuner(conf())
    q = tuner.tune(model, data, eval_dataloader=data)
    adaptor = tuner.adaptor
    assert ModelSize().measure(q, adaptor, None) == saved_size(q, adaptor) == tuner.best_trial.objective
    wide = make_model(n_layers=3, width=256, seed=1)
    space = TuningSpace.build(adaptor.query_fw_capability(wide), tuner.config)
    qw = adaptor.quantize(space.model_wise_configs()[0], wide, make_dataset(wide, n=64))
    assert saved_size(qw, adaptor) < 0.35 * saved_size(wide, adaptor)


def test_footprint_counts_weights_and_working_memory(easy_toy):
    model, data = easy_toy
    adaptor = ToyAdaptor(ilit.load_config({}))
    value = Footprint().measure(model, adaptor, data[0][0])
    assert value >= saved_size(model, adaptor)


def test_objective_direction_and_registry():
    assert Performance().better(1.0, 2.0) and not Performance().better(2.0, 1.0)
    for name, cls in (("performance", Performance), ("footprint", Footprint), ("modelsize", ModelSize)):
        assert registry.load("objective", name) is cls


@pytest.mark.parametrize("objective", ["performance", "footprint", "modelsize"])
def test_each_objective_drives_a_tuning_run(easy_toy, conf, objective):
    model, data = easy_toy
    tuner = ilit.Tuner(conf(tuning={**conf()["tuning"], "objective": objective}))
    assert tuner.tune(model, data, eval_dataloader=data) is not None
    assert tuner.best_trial.objective > 0 and tuner.baseline_objective > 0
