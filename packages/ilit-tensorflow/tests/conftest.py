"""Shared fixtures: a small conv net trained on scikit-learn's digits, its SavedModel and tf.function forms."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import ilit  # noqa: E402

BATCH = 32


def batches(x: np.ndarray, y: np.ndarray, size: int = BATCH):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.fixture(scope="session")
def digits():
    """(train, calibration, test) splits of digits as (N, 8, 8, 1) float32 images in [0, 1] and int labels."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1100], y[:1100]), (x[1100:1300], y[1100:1300]), (x[1300:], y[1300:])


@pytest.fixture(scope="session")
def keras_model(digits):
    """Conv, depthwise conv, a residual add, max pooling, a concat and two dense layers, trained on digits."""
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dwconv")(x)
    r = keras.layers.Conv2D(16, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.Add(name="residual")([x, r])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Concatenate(name="concat")([x, x])
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (xt, yt), _cal, _test = digits
    model.fit(xt, yt, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def saved_model_dir(keras_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("savedmodel") / "digits")
    keras_model.export(path, verbose=False)
    return path


@pytest.fixture(scope="session")
def tf_function(keras_model):
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    def forward(x):
        return keras_model(x, training=False)
    return forward


@pytest.fixture(scope="session")
def calib_loader(digits):
    _train, (xc, yc), _test = digits
    return batches(xc, yc)


@pytest.fixture(scope="session")
def test_loader(digits):
    *_rest, (xs, ys) = digits
    return batches(xs, ys)


def make_config(approach: str = "post_training_static_quant", iterations=(4,), **tuning):
    return ilit.load_config({"framework": {"name": "tensorflow"}, "calibration": {"iterations": list(iterations)},
                             "quantization": {"approach": approach},
                             "tuning": {"metric": {"topk": 1}, **tuning}})


def accuracy(adaptor, model, loader) -> float:
    hits = total = 0
    for x, y in loader:
        pred = np.asarray(adaptor.infer(model, x)).argmax(1)
        hits += int((pred == y).sum())
        total += len(y)
    return hits / total


def interpreter_tensor_types(model) -> dict:
    """Tensor dtype by index as the LiteRT interpreter reports it: a check independent of our flatbuffer parser."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model.content)
    return {d["index"]: np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
