"""The Basic strategy end to end: ilit.Tuner with a YAML config, the topk metric and real digits data."""

import math

import torch
import yaml

from conftest import accuracy

import ilit
from ilit.tune_cfg import fallback_ops


def _config(tmp_path, **tuning):
    conf = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2]},
        "quantization": {"approach": "post_training_static_quant",
                         "weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"scheme": "asym", "algorithm": ["minmax", "kl"]}},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "objective": "performance", "workspace": {"path": str(tmp_path / "ws")}, **tuning},
    }
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return str(path)


def test_basic_strategy_tunes_the_digits_cnn_to_int8(trained_cnn, digits, tmp_path):
    tuner = ilit.Tuner(_config(tmp_path))
    q = tuner.tune(trained_cnn, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert q is not None and tuner.best_trial is not None and tuner.best_trial.meets
    base = tuner.baseline_accuracy
    assert math.isclose(base, accuracy(trained_cnn, digits[1]))
    assert accuracy(q, digits[1]) >= base * 0.99
    assert math.isclose(accuracy(q, digits[1]), tuner.best_trial.accuracy)
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())
    assert tuner.adaptor.calibration_batches <= 2 * len(tuner.history.trials)
    best = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"))
    assert torch.equal(best(digits[1][0][0]), q(digits[1][0][0]))


def test_basic_strategy_falls_back_ops_when_model_wise_configs_miss(trained_cnn, digits, tmp_path):
    # the score is minus the distance to the fp32 logits and no loss is allowed: only fp32 meets the goal,
    # so every model-wise config misses and the op-wise fallback phase runs
    x = torch.cat([xb for xb, _ in digits[1]])
    with torch.no_grad():
        ref = trained_cnn(x)

    def eval_func(model):
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())

    tuner = ilit.Tuner(_config(tmp_path, accuracy_criterion={"absolute": 0.0}, max_trials=6))
    assert tuner.tune(trained_cnn, q_dataloader=digits[0], eval_func=eval_func) is None
    trials = tuner.history.trials
    assert len(trials) == 6
    assert [len(fallback_ops(t.tune_cfg)) for t in trials[:2]] == [0, 0]
    assert all(len(fallback_ops(t.tune_cfg)) >= 1 for t in trials[2:])
    assert all(t.error is None for t in trials)
    # statistics are collected once per algorithm, whatever falls back
    assert tuner.adaptor.calibration_batches == 2 * 2
