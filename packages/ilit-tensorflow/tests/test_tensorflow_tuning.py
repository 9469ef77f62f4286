"""End to end: ilit's Basic strategy tunes the digits model to real INT8 within 1% relative accuracy."""

from __future__ import annotations

import json
import os

import numpy as np

import ilit
from ilit_tensorflow import TFLiteModel

from conftest import accuracy


def test_basic_strategy_meets_one_percent_on_digits(keras_model, calib_loader, test_loader, tmp_path):
    conf = {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [4]},
        "quantization": {"approach": "post_training_static_quant"},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "objective": "performance", "max_trials": 30,
                   "workspace": {"path": str(tmp_path / "ws")}},
    }
    tuner = ilit.Tuner(conf)
    q = tuner.tune(keras_model, calib_loader, eval_dataloader=test_loader)
    assert isinstance(q, TFLiteModel)
    base = tuner.baseline_accuracy
    adaptor = tuner.adaptor
    assert base == accuracy(adaptor, keras_model, test_loader)
    got = accuracy(adaptor, q, test_loader)
    assert got >= base * 0.99
    assert tuner.best_trial is not None and tuner.best_trial.meets
    assert tuner.best_trial.accuracy == got
    # it is really INT8: most quantizable ops carry int8 outputs in the flatbuffer
    int8_ops = [n for n in q.op_index if q.op(n).output_types[0] == "INT8"]
    assert len(int8_ops) >= len(q.op_index) // 2
    # the best model was saved as a .tflite flatbuffer that loads and runs the same
    best_dir = tmp_path / "ws" / "best_model"
    loaded = adaptor.load(str(best_dir))
    x = test_loader[0][0]
    np.testing.assert_array_equal(loaded(x), q(x))
    history = json.loads((tmp_path / "ws" / "history.json").read_text())
    assert history["trials"] and os.path.getsize(best_dir / "model.tflite") == q.size
    # calibration ran once per calibration key, not once per trial
    keys = {ilit.calibration_key(t["tune_cfg"]) for t in history["trials"]}
    assert adaptor.calibration_batches <= 4 * 2 * len(keys)


def fragile_model(digits):
    """A digits net whose frozen 1x1 conv ``fragile`` is an identity plus one dead channel of -1000 weights.

    Per-tensor int8 weights give that conv a scale of ~1000/127, which rounds its identity weights to 0,
    so the model only meets the goal with ``fragile`` in float (or with per-channel weights).
    """
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    fragile = keras.layers.Conv2D(16, 1, activation="relu", name="fragile", trainable=False)
    x = fragile(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out)
    w = np.eye(16, dtype=np.float32)
    w[:, 15] = -1000.0
    fragile.set_weights([w[None, None], np.zeros(16, np.float32)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (xt, yt), _cal, _test = digits
    model.fit(xt, yt, epochs=10, batch_size=32, verbose=0)
    return model


def test_basic_strategy_finds_the_op_to_keep_in_float(digits, calib_loader, test_loader, tmp_path):
    model = fragile_model(digits)
    conf = {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [4]},
        "quantization": {"weight": {"granularity": "per_tensor"}, "activation": {"algorithm": "minmax"}},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "max_trials": 20, "workspace": {"path": str(tmp_path / "ws")}},
    }
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, calib_loader, eval_dataloader=test_loader)
    trials = tuner.history.trials
    assert tuner.baseline_accuracy > 0.9
    assert not trials[0].meets and trials[0].accuracy < 0.5 * tuner.baseline_accuracy  # all-int8 collapses
    assert q is not None and tuner.best_trial.meets
    assert ilit.fallback_ops(tuner.best_trial.tune_cfg) == ["fragile"]
    assert q.op("fragile").is_float and q.op("conv").output_types[0] == "INT8"
    assert accuracy(tuner.adaptor, q, test_loader) >= 0.99 * tuner.baseline_accuracy
    # calibration ran once for all the trials (one calibration key)
    assert tuner.adaptor.calibration_batches == 4


def test_mse_strategy_ranks_the_fragile_op_first_end_to_end(digits, calib_loader, test_loader, tmp_path):
    """The MSE strategy, through inspect_tensor on the float and INT8 flatbuffers, falls back ``fragile`` first."""
    model = fragile_model(digits)
    conf = {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [4]},
        "quantization": {"weight": {"granularity": "per_tensor"}, "activation": {"algorithm": "minmax"}},
        "tuning": {"strategy": "mse", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "max_trials": 20, "workspace": {"path": str(tmp_path / "ws")}},
    }
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, calib_loader, eval_dataloader=test_loader)
    trials = tuner.history.trials
    assert not trials[0].meets  # the model-wise config collapses
    assert ilit.fallback_ops(trials[1].tune_cfg) == ["fragile"]  # the first ranked fallback is the fragile op
    assert q is not None and tuner.best_trial.meets and len(trials) == 2
    assert q.op("fragile").is_float and q.op("conv").output_types[0] == "INT8"
