"""A Keras model with several outputs (a detector's heads): the TFLite models return them in the Keras order.

The TFLite interpreter lists this model's outputs as (size, heatmap, offset), not in the Keras order; a
metric or a decoder given the INT8 outputs would then read the size head as heat-maps. The adaptor orders
them by the signature's names (output_0, output_1, ...), so FP32 and INT8 outputs line up.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import ilit
from ilit_tensorflow import TensorFlowAdaptor


@pytest.fixture(scope="module")
def heads_model():
    """A shared conv trunk and three 1x1-conv heads (10, 2 and 2 channels) with distinct constant biases."""
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 1), name="image")
    f = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="trunk")(inp)
    outs = [keras.layers.Conv2D(c, 1, bias_initializer=keras.initializers.Constant(b), name=name)(f)
            for name, c, b in (("heatmap", 10, -2.0), ("size", 2, 4.0), ("offset", 2, 0.5))]
    return keras.Model(inp, outs)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((16, 12, 12, 1)).astype(np.float32)


def _close(got, want, tol):
    assert [np.shape(g) for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert np.abs(np.asarray(g) - w).max() <= tol * (np.abs(w).max() + 1e-6)


def test_float_and_int8_tflite_outputs_follow_the_keras_order(heads_model, images):
    adaptor = TensorFlowAdaptor(ilit.load_config({"framework": {"name": "tensorflow"}}))
    want = [np.asarray(o) for o in heads_model(images, training=False)]
    _close(adaptor._as_tflite(heads_model)(images), want, 1e-4)  # the float conversion: equal up to rounding
    cap = adaptor.query_fw_capability(heads_model)
    cfg = {"approach": "post_training_static_quant", "calibration": {"iterations": 1},
           "ops": {name: {"op_type": op_type,
                          "weight": {"dtype": "int8", "scheme": "sym", "granularity": "per_channel",
                                     "algorithm": "minmax"},
                          "activation": {"dtype": "int8", "scheme": "asym", "granularity": "per_tensor",
                                         "algorithm": "minmax"}}
                   for (name, op_type) in cap["op_wise"]}}
    q = adaptor.quantize(cfg, heads_model, [(images, None)])
    _close(q(images), want, 0.05)  # INT8: within a few quantization steps of each head's own range
    # the metric gets them in that order too
    seen = []

    class Record(ilit.Metric):
        def reset(self):
            seen.clear()

        def update(self, preds, labels):
            seen.append(preds)

        def result(self):
            return 0.0

    adaptor.evaluate(q, [(images, np.zeros(len(images)))], Record())
    assert [p.shape[-1] for p in seen[0]] == [10, 2, 2]
    assert np.median(seen[0][1]) == pytest.approx(4.0, abs=0.2) and np.median(seen[0][2]) == pytest.approx(0.5,
                                                                                                          abs=0.2)
