"""Interacting ops end to end: an outlier channel between two Dense layers needs both in fp32, and every strategy
finds them; the adaptor reports who feeds whom.

The digits MLP's most active channel after the second Dense is scaled up x1000 and the third Dense's
matching input scaled down (ReLU commutes with a positive scale: the FP32 function is unchanged).
Per-tensor int8 of that tensor, by either op, rounds the other channels to nothing on any ISA.
"""

import numpy as np
import pytest
import tensorflow as tf

import ilit
from ilit.tune_cfg import fallback_ops
from ilit_tensorflow import TensorFlowAdaptor

from conftest import batches, make_config

SCALE = 1000.0
PAIR = {"dense_1", "dense_2"}


def test_capability_edges_follow_the_keras_graph(keras_model):
    cap = TensorFlowAdaptor(make_config()).query_fw_capability(keras_model)
    # by hand from the model: a residual add reading the depthwise conv and the pointwise conv after it,
    # and the flatten (a RESHAPE, not tuned) passed through between the concat and fc
    assert sorted(map(tuple, cap["edges"])) == sorted([
        ("conv", "dwconv"), ("dwconv", "pointwise"), ("dwconv", "residual"), ("pointwise", "residual"),
        ("residual", "pool"), ("pool", "concat"), ("concat", "fc"), ("fc", "logits")])


@pytest.fixture(scope="module")
def outlier_mlp(digits):
    tf.keras.utils.set_random_seed(0)
    (xt, yt), _cal, (xs, _ys) = digits
    layers = tf.keras.layers
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), layers.Flatten(),
                                 layers.Dense(64, activation="relu", name="dense"),
                                 layers.Dense(64, activation="relu", name="dense_1"),
                                 layers.Dense(64, activation="relu", name="dense_2"), layers.Dense(10, name="dense_3")])
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xt, yt, batch_size=64, epochs=10, verbose=0)
    before = model(xs).numpy()
    hidden = tf.keras.Sequential(model.layers[:3])(xt).numpy()
    channel = int(hidden.mean(0).argmax())  # the most active channel between dense_1 and dense_2
    a, b = model.get_layer("dense_1"), model.get_layer("dense_2")
    ka, ba = a.get_weights()
    kb, bb = b.get_weights()
    ka[:, channel] *= SCALE
    ba[channel] *= SCALE
    kb[channel, :] /= SCALE
    a.set_weights([ka, ba])
    b.set_weights([kb, bb])
    after = model(xs).numpy()
    return model, before, after


def conf(strategy, ws, **tuning):
    return {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [4]},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"dtype": "int8", "scheme": "asym", "algorithm": "minmax"}},
        "tuning": {"strategy": strategy, "accuracy_criterion": {"relative": 0.01}, "objective": "modelsize",
                   "random_seed": 3, "workspace": {"path": str(ws)}, **tuning},
    }


def test_the_outlier_keeps_the_fp32_function(outlier_mlp):
    _model, before, after = outlier_mlp
    assert np.allclose(before, after, rtol=1e-3, atol=1e-3 * np.abs(before).max())


@pytest.mark.parametrize("strategy", ["basic", "mse", "bayesian"])
def test_every_strategy_keeps_the_interacting_pair_in_fp32(outlier_mlp, digits, tmp_path, strategy):
    model = outlier_mlp[0]
    (xt, yt), _cal, (xs, ys) = digits
    calib = batches(xt, yt)
    first = ilit.Tuner(conf(strategy, tmp_path / "first"))

    def accuracy(m):
        return float((np.asarray(first.adaptor.infer(m, xs)).argmax(1) == ys).mean())

    assert first.tune(model, calib, eval_func=accuracy) is not None
    trials = first.history.trials
    assert trials[0].accuracy < 0.5 * first.baseline_accuracy  # all-INT8 is ruined by the outlier, on any ISA
    kept = set(fallback_ops(first.best_trial.tune_cfg))
    assert PAIR <= kept and len(kept) <= 3  # timeout 0: the first passing config, near-minimal
    assert len(trials) <= 1 + 3 * 4
    # with a budget the shrinking pass reaches exactly the pair, the smallest passing model
    budget = ilit.Tuner(conf(strategy, tmp_path / "budget", timeout=3600, max_trials=10))
    assert budget.tune(model, calib, eval_func=accuracy) is not None
    assert set(fallback_ops(budget.best_trial.tune_cfg)) == PAIR
