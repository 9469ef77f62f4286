"""End to end: ilit.Tuner with the Basic strategy tunes the digits conv net to INT8 within 1% relative."""

from __future__ import annotations

import json
import os

import pytest

import ilit
from conftest import accuracy, make_adaptor
from ilit_mxnet import SymbolModel, node_precisions


def _eval_func(evalset):
    ad = make_adaptor()
    return lambda model: accuracy(ad, model, evalset)


def test_basic_strategy_tunes_digits_within_one_percent(gluon_net, calib, evalset, tmp_path):
    conf = {  # no framework.name: the adaptor is detected from the Gluon model
        "calibration": {"iterations": [4]},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.01},
                   "workspace": {"path": str(tmp_path / "ws")}},
    }
    tuner = ilit.Tuner(conf)
    best = tuner.tune(gluon_net, calib, eval_func=_eval_func(evalset))
    assert type(tuner.adaptor).__name__ == "MXNetAdaptor"
    assert isinstance(best, SymbolModel)
    assert "int8" in node_precisions(best).values()
    assert tuner.best_trial is not None and tuner.best_trial.meets
    base = tuner.baseline_accuracy
    assert base > 0.9
    acc = accuracy(make_adaptor(), best, evalset)
    assert acc >= base * 0.99
    assert abs(acc - tuner.best_trial.accuracy) < 1e-9
    with open(tuner.history_path) as f:
        hist = json.load(f)
    assert hist["best"] == tuner.best_trial.trial
    saved = make_adaptor().load(str(tmp_path / "ws" / "best_model"))
    assert node_precisions(saved) == node_precisions(best)
    assert accuracy(make_adaptor(), saved, evalset) == acc


def test_tune_with_a_forced_fallback_and_the_topk_metric(gluon_net, calib, evalset, tmp_path):
    conf = {
        "framework": {"name": "mxnet"},
        "calibration": {"iterations": [4], "algorithm": {"activation": "kl"}},
        "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "ops": {"digits_dense1_fwd": {"activation": {"dtype": "fp32"}, "weight": {"dtype": "fp32"}}},
                   "workspace": {"path": str(tmp_path / "ws")}},
    }
    tuner = ilit.Tuner(conf)
    best = tuner.tune(gluon_net, calib, eval_dataloader=evalset)
    prec = node_precisions(best)
    assert prec["digits_dense1_fwd"] == "fp32"
    assert [p for op, p in prec.items() if op != "digits_dense1_fwd"] == ["int8"] * 5
    assert best.meta["calibration"] == "kl"
    assert tuner.best_trial.accuracy >= tuner.baseline_accuracy * 0.99
    assert os.path.isfile(tmp_path / "ws" / "best_model" / "model-symbol.json")


@pytest.fixture(scope="module")
def fragile_net(digits):
    """A classifier with one huge (but never used) weight: INT8 weights for its last layer lose the small ones."""
    from conftest import trained_gluon_net

    net = trained_gluon_net(digits, seed=9, epochs=6)
    params = net.collect_params()
    w0, b0 = params["digits_dense0_weight"].data(), params["digits_dense0_bias"].data()
    w0[0] = 0  # hidden unit 0 is always relu(-1) = 0 ...
    b0[0] = -1
    params["digits_dense1_weight"].data()[:, 0] = 1000.0  # ... so this huge weight never changes the FP32 output
    return net


def _fragile_conf(tmp_path, strategy, **quant):
    return {
        "framework": {"name": "mxnet"},
        "calibration": {"iterations": [4], "algorithm": {"activation": "minmax"}},
        "quantization": {"activation": {"dtype": "int8", "scheme": ["asym", "sym"]}, **quant},
        "tuning": {"strategy": strategy, "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "workspace": {"path": str(tmp_path / "ws")}},
    }


def test_basic_strategy_falls_back_the_fragile_layer(fragile_net, calib, evalset, tmp_path):
    """The model-wise configs miss the goal alike, so Basic cuts that phase short after 3 of the 4 and falls
    ops back one at a time from the last; the fragile layer alone in FP32 meets it, and the returned graph
    keeps exactly that layer in FP32."""
    tuner = ilit.Tuner(_fragile_conf(tmp_path, "basic"))
    best = tuner.tune(fragile_net, calib, eval_dataloader=evalset)
    model_wise = [t for t in tuner.history.trials if not ilit.fallback_ops(t.tune_cfg)]
    assert len(model_wise) == 3 and not any(t.meets for t in model_wise)  # of 2 granularities x 2 schemes
    assert max(t.accuracy for t in model_wise) < 0.5
    assert best is not None and tuner.best_trial.meets
    assert ilit.fallback_ops(tuner.best_trial.tune_cfg) == ["digits_dense1_fwd"]
    prec = node_precisions(best)
    assert prec.pop("digits_dense1_fwd") == "fp32" and set(prec.values()) == {"int8"}
    assert tuner.adaptor.calibration_batches == 4  # one calibration served every trial


def test_mse_strategy_ranks_the_fragile_layer_first(fragile_net, calib, evalset, tmp_path):
    """inspect_tensor feeds the MSE strategy: the fragile layer's output drifts most, so it falls back first."""
    conf = _fragile_conf(tmp_path, "mse", weight={"granularity": "per_tensor"})
    conf["quantization"]["activation"]["scheme"] = "asym"
    tuner = ilit.Tuner(conf)
    best = tuner.tune(fragile_net, calib, eval_dataloader=evalset)
    trials = tuner.history.trials
    assert len(trials) == 2 and not trials[0].meets
    assert ilit.fallback_ops(trials[1].tune_cfg) == ["digits_dense1_fwd"] and trials[1].meets
    assert node_precisions(best)["digits_dense1_fwd"] == "fp32"
