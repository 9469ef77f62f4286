"""The tuning loop: both usages, stop rules, dedup, calibration reuse, failure handling and the log."""

import json
import logging
import math

import numpy as np
import pytest

import ilit
import ilit_toy
from ilit_toy import ToyAdaptor


def weights(model):
    return [(l.W.copy(), l.b.copy(), l.qcfg) for l in model.layers]


def test_usage_a_eval_dataloader_and_metric(easy_toy, conf):
    model, data = easy_toy
    before = weights(model)
    tuner = ilit.Tuner(conf())
    q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None and q is not model
    assert all(l.quantized for l in q.layers)  # really integer-quantized layers
    assert tuner.baseline_accuracy == 1.0
    assert tuner.best_trial.meets and tuner.best_trial.accuracy >= 0.98
    # the user's FP32 model is untouched
    for (w, b, qc), layer in zip(before, model.layers):
        assert np.array_equal(w, layer.W) and np.array_equal(b, layer.b) and qc is None and layer.qcfg is None


def test_usage_b_eval_func(easy_toy, conf):
    model, data = easy_toy
    seen = []

    def eval_func(m):
        seen.append(m)
        return ilit_toy.accuracy(m, data)

    c = conf()
    del c["tuning"]["metric"]
    tuner = ilit.Tuner(c)
    q = tuner.tune(model, data, eval_func=eval_func)
    assert q is not None and seen[0] is model and seen[-1] is q
    assert tuner.history.trials[0].accuracy == eval_func(q)


def test_timeout_zero_stops_at_the_first_passing_config(easy_toy, conf):
    model, data = easy_toy
    tuner = ilit.Tuner(conf(calibration={"iterations": [2, 4]}))
    tuner.tune(model, data, eval_dataloader=data)
    assert len(tuner.history.trials) == 1 and tuner.history.trials[0].meets


def test_timeout_positive_keeps_searching_for_the_best_objective(easy_toy, conf):
    model, data = easy_toy
    c = conf(quantization={"weight": {"scheme": ["sym", "asym"], "granularity": ["per_channel", "per_tensor"]},
                           "activation": {"dtype": "uint8", "scheme": "asym"}})
    c["tuning"]["timeout"] = 3600
    tuner = ilit.Tuner(c)
    tuner.tune(model, data, eval_dataloader=data)
    trials = tuner.history.trials
    assert len(trials) == 4  # the whole (model-wise) space, though the first already passed
    passing = [t for t in trials if t.meets]
    assert tuner.best_trial.objective == min(t.objective for t in passing)
    # a trial below the goal cannot be returned, so its objective is not spent time on
    assert all(math.isnan(t.objective) for t in trials if not t.meets)


def test_timeout_reached_stops_and_returns_none(easy_toy, conf):
    model, data = easy_toy
    c = conf()
    c["tuning"]["timeout"] = 1e-9
    tuner = ilit.Tuner(c)
    assert tuner.tune(model, data, eval_dataloader=data) is None
    assert tuner.history.trials == [] and tuner.history.finished


def test_max_trials(toy, conf):
    model, data = toy
    c = conf()
    c["tuning"]["max_trials"] = 3
    tuner = ilit.Tuner(c)
    tuner.tune(model, data, eval_dataloader=data)
    assert len(tuner.history.trials) == 3


def test_exhausted_space_returns_none_and_names_the_closest_trial(toy, conf, caplog):
    model, data = toy
    x = np.concatenate([x for x, _ in data])
    y = np.concatenate([y for _, y in data])

    def eval_func(m):  # any quantized model scores far below the FP32 one: the goal cannot be met
        return float((m(x).argmax(1) == y).mean()) - (0.0 if m is model else 0.5)

    c = conf()
    del c["tuning"]["metric"]
    tuner = ilit.Tuner(c)
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = tuner.tune(model, data, eval_func=eval_func)
    assert q is None
    trials = tuner.history.trials
    # 1 model-wise, 6 single fallbacks (last op first), then the groups of the fallback search; never the
    # same config twice, and all-fp32 (the baseline) never tried; the search is bounded by 3 x ops
    assert [ilit.fallback_ops(t.tune_cfg) for t in trials[:7]] == [[]] + [[f"dense{i}"] for i in range(5, -1, -1)]
    assert 1 + 6 < len(trials) <= 1 + 3 * 6
    assert len({t.fingerprint for t in trials}) == len(trials)
    assert all(ilit.quantized_ops(t.tune_cfg) for t in trials)
    best = max(trials, key=lambda t: t.accuracy)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][-1]
    assert f"Closest: trial {best.trial} with accuracy {best.accuracy:.4f}" in warning
    assert tuner.history_path in warning
    with open(tuner.history_path) as f:
        assert len(json.load(f)["trials"]) == len(trials)


def test_same_config_never_evaluated_twice_and_calibration_reused(toy, conf, monkeypatch):
    model, data = toy
    c = conf(calibration={"iterations": [2, 3], "algorithm": {"activation": ["minmax", "kl"]}},
             quantization={"weight": {"granularity": ["per_channel", "per_tensor"], "scheme": "sym"},
                           "activation": {"dtype": "uint8", "scheme": "asym"}})
    c["tuning"]["strategy"] = "toy_repeat"  # proposes every config twice
    tuner = ilit.Tuner(c)
    tuner.tune(model, data, eval_dataloader=data)
    n = len(tuner.space_configs) if hasattr(tuner, "space_configs") else 2 * 2 * 2
    assert len(tuner.history.trials) == n
    assert tuner.adaptor.quantize_calls == n
    assert len({t.fingerprint for t in tuner.history.trials}) == n
    # 2 iteration counts x 2 algorithms = 4 calibration settings, each run once: 2+2+3+3 batches
    assert tuner.adaptor.calibration_batches == 2 + 2 + 3 + 3


def test_a_failing_trial_is_recorded_and_tuning_goes_on(easy_toy, conf, monkeypatch):
    model, data = easy_toy
    real = ToyAdaptor.quantize

    def flaky(self, tune_cfg, *a, **k):
        if tune_cfg["ops"]["dense0"]["weight"].get("granularity") == "per_channel":
            raise RuntimeError("no kernel for this config")
        return real(self, tune_cfg, *a, **k)

    monkeypatch.setattr(ToyAdaptor, "quantize", flaky)
    c = conf(quantization={"weight": {"granularity": ["per_channel", "per_tensor"], "scheme": "sym"},
                           "activation": {"dtype": "uint8", "scheme": "asym"}})
    tuner = ilit.Tuner(c)
    q = tuner.tune(model, data, eval_dataloader=data)
    first, second = tuner.history.trials
    assert first.error == "RuntimeError: no kernel for this config" and not first.meets and math.isnan(first.accuracy)
    assert second.error is None and second.meets and q is not None


def test_every_trial_failing_raises_with_the_first_error(easy_toy, conf, monkeypatch):
    model, data = easy_toy

    def broken(self, *a, **k):
        raise ValueError("bad op")

    monkeypatch.setattr(ToyAdaptor, "quantize", broken)
    with pytest.raises(RuntimeError, match="every trial failed; the first error was: ValueError: bad op"):
        ilit.Tuner(conf()).tune(model, data, eval_dataloader=data)


def test_basic_strategy_falls_back_the_fragile_ops(toy, conf):
    model, data = toy
    tuner = ilit.Tuner(conf())
    q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None
    returned = tuner.best_trial.tune_cfg
    assert set(ilit.fallback_ops(returned)) == {"dense2", "dense4"}
    assert not q.layers[2].quantized and not q.layers[4].quantized and q.layers[0].quantized
    trials = tuner.history.trials
    assert not trials[0].meets  # the model-wise config failed first
    # then each op alone, bottom to top, before the cumulative phase
    singles = [ilit.fallback_ops(t.tune_cfg) for t in trials[1:7]]
    assert singles == [["dense5"], ["dense4"], ["dense3"], ["dense2"], ["dense1"], ["dense0"]]
    assert len(trials) <= 1 + 6 + 2


def test_errors_for_missing_evaluation(easy_toy, conf):
    model, data = easy_toy
    with pytest.raises(ValueError, match="eval_dataloader .* or eval_func"):
        ilit.Tuner(conf()).tune(model, data)
    c = conf()
    del c["tuning"]["metric"]
    with pytest.raises(ilit.ConfigError, match=r"^tuning.metric: an eval_dataloader needs a metric"):
        ilit.Tuner(c).tune(model, data, eval_dataloader=data)
    with pytest.raises(ilit.ConfigError, match=r"^tuning.metric.toy_accuracy: the toy_accuracy metric does not take"):
        ilit.Tuner(conf(tuning={**conf()["tuning"], "metric": {"toy_accuracy": 5}})).tune(model, data,
                                                                                          eval_dataloader=data)


def test_unknown_framework_name(easy_toy, conf):
    model, data = easy_toy
    with pytest.raises(ilit.PluginNotFoundError, match=r"no adaptor 'mxnet' is installed \(installed: toy\); "
                                                       r"to add one, pip install 'ilit-mxnet\[mxnet\]'"):
        ilit.Tuner(conf(framework={"name": "mxnet"})).tune(model, data, eval_dataloader=data)


def test_per_trial_log_lines_and_summary(toy, conf, caplog):
    model, data = toy
    tuner = ilit.Tuner(conf())
    with caplog.at_level(logging.INFO, logger="ilit"):
        tuner.tune(model, data, eval_dataloader=data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    assert len(lines) == len(tuner.history.trials)
    assert "fp32 fallback=1 (dense5)" in lines[1] and "accuracy" in lines[1] and "modelsize not measured" in lines[1]
    assert "modelsize" in lines[-1] and "kB" in lines[-1]
    summary = tuner.summary()
    assert summary.splitlines()[0] == "tuning summary (* = returned model; ? = measured on a busy machine):"
    assert f"{tuner.best_trial.trial}*" in summary and "baseline" in summary
    # the toy's int8 model stores scales beside int8 weights: saved, it is larger than its fp32 model, and the
    # summary says so under the table
    assert summary.splitlines()[-1] == ("  NOTE: the returned model is not better than FP32 on modelsize "
                                        f"({tuner.best_trial.ratio:.3g}x)") and tuner.best_trial.ratio > 1
    assert len(summary.splitlines()) == 4 + len(tuner.history.trials)


def test_a_returned_model_slower_than_fp32_is_logged_and_summarised(easy_toy, conf, caplog, monkeypatch):
    from ilit.objectives.performance import Performance

    calls = []

    def compare(self, model, baseline_model, adaptor, inputs):
        calls.append((model, baseline_model))
        return ilit.Comparison(value=2.0, baseline=1.0, ratio=2.0, spread=0.01, reliable=True)

    monkeypatch.setattr(Performance, "compare", compare)
    model, data = easy_toy
    tuner = ilit.Tuner(conf(tuning={"objective": "performance"}))
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None and calls and all(base is model for _q, base in calls)  # measured beside the FP32 model
    best = tuner.best_trial
    assert (best.ratio, best.spread, best.reliable) == (2.0, 0.01, True)
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("NOT better than the FP32 model on performance: 2x FP32" in w for w in warnings_), warnings_
    assert "NOTE: the returned model is not better than FP32 on performance (2x)" in tuner.summary()
    saved = json.loads(open(tuner.history_path).read())
    assert saved["trials"][best.trial - 1]["ratio"] == 2.0


def test_trials_are_compared_by_their_ratio_to_fp32_measured_beside_them(easy_toy, conf, monkeypatch):
    """A busy window inflates both latencies of a trial alike: the ratio, not the raw value, picks the best."""
    from ilit.objectives.performance import Performance

    window = iter([(50.0, 100.0), (9.0, 10.0), (5.0, 10.0), (7.0, 10.0)] * 10)  # (int8, fp32) per trial

    def compare(self, model, baseline_model, adaptor, inputs):
        value, base = next(window)
        return ilit.Comparison(value, base, value / base, 0.0, True)

    monkeypatch.setattr(Performance, "compare", compare)
    model, data = easy_toy
    c = conf(tuning={"objective": "performance", "timeout": 600, "max_trials": 4},
             calibration={"iterations": [1, 2, 3, 4], "algorithm": {"activation": "minmax"}})
    tuner = ilit.Tuner(c)
    tuner.tune(model, data, eval_dataloader=data)
    passing = [t for t in tuner.history.trials if t.meets]
    assert len(passing) >= 3
    assert tuner.best_trial.ratio == min(t.ratio for t in passing) == 0.5


def test_best_model_saved_in_workspace(easy_toy, conf, tmp_path):
    model, data = easy_toy
    tuner = ilit.Tuner(conf())
    q = tuner.tune(model, data, eval_dataloader=data)
    loaded = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"))
    x = data[0][0]
    np.testing.assert_allclose(loaded(x), q(x), rtol=1e-5, atol=1e-5)


def test_configs_the_adaptor_calls_the_same_model_run_once(easy_toy, conf, monkeypatch):
    model, data = easy_toy

    def canonical(self, tune_cfg):  # say asym activations ignore the dtype, as MXNet's do
        out = {**tune_cfg, "ops": {n: dict(op) for n, op in tune_cfg["ops"].items()}}
        for op in out["ops"].values():
            if op["activation"].get("scheme") == "asym":
                op["activation"] = {**op["activation"], "dtype": "int8"}
        return out

    monkeypatch.setattr(ToyAdaptor, "canonical_cfg", canonical)
    c = conf(quantization={"weight": {"granularity": "per_channel", "scheme": "sym"},
                           "activation": {"dtype": ["uint8", "int8"], "scheme": "asym"}})
    c["tuning"]["timeout"] = 3600  # run the whole model-wise space
    tuner = ilit.Tuner(c)
    tuner.tune(model, data, eval_dataloader=data)
    assert len(tuner.history.trials) == 1 and tuner.adaptor.quantize_calls == 1
    assert tuner.history.trials[0].tune_cfg["ops"]["dense0"]["activation"]["dtype"] == "int8"


class ListStrategy(ilit.Strategy):
    """A strategy whose configs() returns a plain list, not a generator (it has no close())."""

    def configs(self):
        return list(self.space.model_wise_configs())


class BatchStrategy(ilit.Strategy):
    """Yields the model-wise configs as one batch of independent configs."""

    def configs(self):
        yield list(self.space.model_wise_configs())


@pytest.mark.parametrize("strategy_cls", [ListStrategy, BatchStrategy])
def test_a_strategy_may_return_a_list_or_yield_a_batch(easy_toy, conf, monkeypatch, strategy_cls):
    from ilit import registry

    model, data = easy_toy
    original = registry.load
    monkeypatch.setattr(registry, "load", lambda kind, name: strategy_cls if kind == "strategy" else
                        original(kind, name))
    c = conf(tuning={"timeout": 600, "max_trials": 10},
             calibration={"iterations": [1, 2, 3], "algorithm": {"activation": "minmax"}})
    tuner = ilit.Tuner(c)
    q = tuner.tune(model, data, eval_dataloader=data)
    assert q is not None and len(tuner.history.trials) == 3 and tuner.history.finished
    assert tuner.history.stop_reason == "the strategy's space is exhausted"
    assert [t.tune_cfg["calibration"]["iterations"] for t in tuner.history.trials] == [1, 2, 3]


def test_ilit_log_lines_are_not_repeated_by_a_root_handler_added_later(tmp_path):
    """TensorFlow's absl adds a root handler after ilit added its own: each line must still appear once."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import logging, sys
        import ilit, ilit_toy
        model = ilit_toy.make_model(n_layers=3, seed=3)
        data = ilit_toy.make_dataset(model)
        conf = {{"framework": {{"name": "toy"}}, "tuning": {{"metric": {{"toy_accuracy": None}},
                 "accuracy_criterion": {{"relative": 0.5}}, "workspace": {{"path": {str(tmp_path)!r}}}}}}}
        ilit.Tuner(conf).tune(model, data, eval_dataloader=data)
        logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))  # what absl does on import
        logging.getLogger().setLevel(logging.INFO)
        ilit.Tuner(conf).tune(model, data, eval_dataloader=data)
    """)
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stderr
    assert err.count("FP32 baseline: accuracy") == 2, err


class CountingStrategy(ilit.Strategy):
    """Proposes the model-wise configs; its insights count what it has observed."""

    def configs(self):
        yield from self.space.model_wise_configs()

    def observe(self, tune_cfg, result):
        super().observe(tune_cfg, result)
        self.insights["observed"] = len(self.results)


def test_each_saved_history_holds_what_the_strategy_learned_from_its_last_trial(easy_toy, conf, monkeypatch):
    from ilit import registry
    from ilit.history import History

    saved = []
    original_save = History.save

    def save(self, path):
        saved.append((len(self.trials), dict(self.strategy_insights)))
        original_save(self, path)

    monkeypatch.setattr(History, "save", save)
    original = registry.load
    monkeypatch.setattr(registry, "load", lambda kind, name: CountingStrategy if kind == "strategy" else
                        original(kind, name))
    model, data = easy_toy
    c = conf(tuning={"timeout": 600, "max_trials": 10},
             calibration={"iterations": [1, 2, 3], "algorithm": {"activation": "minmax"}})
    ilit.Tuner(c).tune(model, data, eval_dataloader=data)
    after_trials = [(n, ins) for n, ins in saved if n > 0]
    assert [n for n, _ in after_trials][:3] == [1, 2, 3]
    assert all(ins.get("observed") == n for n, ins in after_trials), after_trials


def test_the_adaptor_gets_the_first_calibration_inputs_before_its_capability(easy_toy, conf, monkeypatch):
    """``Adaptor.example_inputs`` is the q_dataloader's first batch's inputs when query_fw_capability runs
    (ilit-pytorch exports the model with it to choose its backend); None on an adaptor made by hand."""
    model, data = easy_toy
    seen = []
    real = ToyAdaptor.query_fw_capability

    def spy(self, m):
        seen.append(self.example_inputs)
        return real(self, m)
    monkeypatch.setattr(ToyAdaptor, "query_fw_capability", spy)
    assert ToyAdaptor(ilit.load_config(conf())).example_inputs is None
    ilit.Tuner(conf()).tune(model, q_dataloader=data, eval_dataloader=data)
    assert len(seen) == 1 and seen[0] is not None
    np.testing.assert_array_equal(np.asarray(seen[0]), np.asarray(data[0][0]))
