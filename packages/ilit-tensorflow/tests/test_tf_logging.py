"""ilit's log lines are printed once under TensorFlow, whose import puts a handler on the root logger."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import ilit

    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp))
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    rng = np.random.default_rng(0)
    data = [(rng.random((16, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 16)) for _ in range(2)]
    for run in range(2):  # TensorFlow adds a root handler during the first run; the second runs with it in place
        with tempfile.TemporaryDirectory() as ws:
            conf = {"framework": {"name": "tensorflow"}, "calibration": {"iterations": [1]},
                    "quantization": {"activation": {"algorithm": "minmax"},
                                     "weight": {"granularity": "per_tensor"}},
                    "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.99}, "max_trials": 1,
                               "objective": "modelsize", "workspace": {"path": ws}}}
            ilit.Tuner(conf).tune(model, data, eval_dataloader=data)
""")


def test_ilit_log_lines_are_printed_once_under_tensorflow(tmp_path):
    """A user's script, as it runs outside pytest (whose own log capture would hide the problem): TensorFlow puts a
    handler on the root logger, and an ilit line must not come out both through ilit's handler and the root's."""
    script = tmp_path / "tune_twice.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    for marker in ("FP32 baseline: accuracy", "trial 1 (ran)", "tuning summary"):
        shown = [ln for ln in lines if marker in ln]
        assert len(shown) == 2, (marker, shown)  # once per run, not twice
