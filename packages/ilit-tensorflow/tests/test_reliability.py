"""Issue 8 for the TensorFlow adaptor: models of another framework, through ``ilit.Tuner`` with the real adaptor."""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

import ilit
import ilit_tensorflow.adaptor as tf_adaptor
from ilit_tensorflow import TensorFlowAdaptor, TFLiteModel


def tuner_conf(tmp_path, **tuning):
    return {"framework": {"name": "tensorflow"}, "calibration": {"iterations": [4]},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.05}, "max_trials": 5,
                       "workspace": {"path": str(tmp_path / "ws")}, **tuning}}


@pytest.fixture
def adaptor_calls(monkeypatch):
    """Records every conversion, capability query and quantization the TensorFlow adaptor starts."""
    calls = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tf_adaptor, "run_converter", spy("run_converter", tf_adaptor.run_converter))
    for name in ("quantize", "query_fw_capability", "_prepare"):
        monkeypatch.setattr(TensorFlowAdaptor, name, spy(name, getattr(TensorFlowAdaptor, name)))
    return calls


# ---------------------------------------------------------------------- 1. a model of another framework

def _foreign(kind, tmp_path):
    if kind == "mxnet_block":
        return type("HybridSequential", (), {"__module__": "mxnet.gluon.nn.basic_layers"})()
    if kind == "torch_module":
        return type("Sequential", (), {"__module__": "torch.nn.modules.container"})()
    if kind == "plain_object":
        return object()
    if kind == "numpy_array":
        return np.zeros((2, 8, 8, 1), np.float32)
    if kind == "dir_not_saved_model":
        tmp_path.mkdir()
        (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n")
        return str(tmp_path)
    if kind == "missing_path":
        return pathlib.Path(tmp_path / "no_such_model")
    if kind == "keras_layer":
        return tf.keras.layers.Dense(3)
    if kind == "tf_function_without_signature":
        return tf.function(lambda x: x)
    if kind == "tflite_model":
        return TFLiteModel(b"")
    raise AssertionError(kind)


FOREIGN = ["mxnet_block", "torch_module", "plain_object", "numpy_array", "dir_not_saved_model", "missing_path",
           "keras_layer", "tf_function_without_signature", "tflite_model"]


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_model_the_adaptor_does_not_take_is_refused_before_anything_runs(kind, tmp_path, calib_loader,
                                                                          test_loader, adaptor_calls):
    model = _foreign(kind, tmp_path / "m")
    assert not TensorFlowAdaptor.accepts(model)
    tuner = ilit.Tuner(tuner_conf(tmp_path))
    with pytest.raises(ilit.ConfigError) as info:
        tuner.tune(model, calib_loader, eval_dataloader=test_loader)
    message = str(info.value)
    assert info.value.path == "framework.name" and message.startswith("framework.name")
    assert f"{type(model).__module__}.{type(model).__qualname__}" in message
    assert adaptor_calls == []                # no conversion, capability query or quantization ran
    assert tuner.adaptor is None and tuner.history is None
    assert "torch" not in sys.modules and "mxnet" not in sys.modules  # telling them apart imported neither


@pytest.mark.parametrize("kind", ["mxnet_block", "torch_module"])
def test_a_foreign_model_without_framework_name_is_not_taken_for_tensorflow(kind, tmp_path, calib_loader,
                                                                            test_loader, adaptor_calls):
    conf = tuner_conf(tmp_path)
    del conf["framework"]
    with pytest.raises(ilit.ConfigError, match="framework.name"):
        ilit.Tuner(conf).tune(_foreign(kind, tmp_path), calib_loader, eval_dataloader=test_loader)
    assert adaptor_calls == []
    assert "torch" not in sys.modules and "mxnet" not in sys.modules


def test_every_model_form_the_readme_lists_is_accepted(keras_model, saved_model_dir, tf_function):
    keras = tf.keras

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    for model in (keras_model, sequential, Subclassed(), saved_model_dir, pathlib.Path(saved_model_dir), tf_function):
        assert TensorFlowAdaptor.accepts(model), model
    # the SavedModel directory of a path that only names its parent is not one
    assert not TensorFlowAdaptor.accepts(os.path.dirname(saved_model_dir))
