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
