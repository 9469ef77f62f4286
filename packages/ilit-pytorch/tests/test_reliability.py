"""Issue 8 for the pytorch adaptor: models it does not take."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_adaptor

import ilit
from ilit_pytorch import PyTorchAdaptor

FRAMEWORKS = ("mxnet", "tensorflow", "keras", "jax", "onnxruntime")


def _conf(tmp_path, approach="post_training_static_quant", **tuning):
    """Two calibration batches, minmax only, an easy goal (half the baseline), stop at the first pass."""
    return {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [2]},
        "quantization": {"approach": approach, "activation": {"algorithm": "minmax"}},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.5}, "max_trials": 4,
                   "workspace": {"path": str(tmp_path / "ws")}, **tuning},
    }


# ------------------------------------------------------------------ 1. models of another framework
def _foreign_models():
    hybrid = type("HybridSequential", (), {"__module__": "mxnet.gluon.nn.basic_layers"})  # mxnet is not installed
    keras = type("Sequential", (), {"__module__": "keras.src.models.sequential"})
    return {
        "mxnet-block": hybrid(),
        "keras-model": keras(),
        "plain-object": object(),
        "numpy-array": np.zeros((2, 64), dtype=np.float32),
        "torch-tensor": torch.zeros(2, 64),  # from torch, but not a model
        "torchscript": torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()),
        "model-class": nn.Linear,  # the class, not an instance
    }


@pytest.mark.parametrize("kind", list(_foreign_models()))
def test_tune_refuses_a_model_the_pytorch_adaptor_does_not_take_before_any_calibration(kind, digits, tmp_path,
                                                                                       monkeypatch):
    model = _foreign_models()[kind]
    calls = []
    for hook in ("__init__", "query_fw_capability", "quantize", "infer"):
        real = getattr(PyTorchAdaptor, hook)

        def record(*a, _hook=hook, _real=real, **k):
            calls.append(_hook)
            return _real(*a, **k)
        monkeypatch.setattr(PyTorchAdaptor, hook, record)
    imported = {m for m in FRAMEWORKS if m in sys.modules}
    tuner = ilit.Tuner(_conf(tmp_path, metric={"topk": 1}))
    with pytest.raises(ilit.ConfigError) as info:
        tuner.tune(model, q_dataloader=digits[0], eval_dataloader=digits[1])
    message = str(info.value)
    assert info.value.path == "framework.name" and message.startswith("framework.name:")
    assert type(model).__qualname__ in message and type(model).__module__ in message
    assert calls == [] and tuner.adaptor is None  # refused before the adaptor existed: nothing calibrated
    assert {m for m in FRAMEWORKS if m in sys.modules} == imported  # and no other framework was imported
    assert not os.path.exists(tmp_path / "ws" / "history.json")


def test_accepts_every_module_form_the_adaptor_tunes(trained_cnn):
    assert PyTorchAdaptor.accepts(trained_cnn)
    assert PyTorchAdaptor.accepts(torch.fx.symbolic_trace(trained_cnn))
    assert PyTorchAdaptor.accepts(nn.Linear(2, 2)) and PyTorchAdaptor.accepts(nn.Sequential())
    assert not any(PyTorchAdaptor.accepts(m) for m in _foreign_models().values())
    with pytest.raises(TypeError, match="scripted from"):  # called directly, the adaptor says so too
        make_adaptor().query_fw_capability(_foreign_models()["torchscript"])
