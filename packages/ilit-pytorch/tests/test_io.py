"""save/load without pickle, inspect_tensor, fingerprints, and the error when torch is missing."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DigitsCNN, ResidualNet, UnscriptableNet, UntraceableNet, make_adaptor, uniform_cfg

from ilit.objectives import saved_size
from ilit_pytorch.serialize import META_FILE, MODEL_FILE, STATE_FILE


def test_save_load_round_trip_without_pickle(trained_cnn, digits, tmp_path, monkeypatch):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn, fallback=["fc2"]), trained_cnn, digits[0])
    adaptor.save(q, str(tmp_path / "int8"))
    assert json.loads((tmp_path / "int8" / META_FILE).read_text())["format"] == "torchscript"

    def no_pickle(*a, **k):
        raise AssertionError("load must not unpickle")
    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    loaded = adaptor.load(str(tmp_path / "int8"))
    x = digits[1][0][0]
    assert torch.equal(loaded(x), q(x))
    assert np.array_equal(adaptor.infer(loaded, x).numpy(), adaptor.infer(q, x).numpy())


def test_saved_int8_model_is_at_most_three_tenths_of_fp32(digits):
    model = DigitsCNN().eval()  # the demo's model (size does not depend on training)
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    ratio = saved_size(q, adaptor) / saved_size(model, adaptor)
    assert ratio <= 0.3, ratio


def test_weights_only_fallback_for_models_torchscript_cannot_take(tmp_path):
    torch.manual_seed(0)
    model = UnscriptableNet().eval()
    adaptor = make_adaptor()
    adaptor.save(model, str(tmp_path / "m"))
    assert (tmp_path / "m" / STATE_FILE).exists() and not (tmp_path / "m" / MODEL_FILE).exists()
    with pytest.raises(ValueError, match="pass that model"):
        adaptor.load(str(tmp_path / "m"))
    fresh = UnscriptableNet()
    back = adaptor.load(str(tmp_path / "m"), model=fresh)
    x = torch.randn(3, 4)
    assert torch.equal(back(x), model(x))


def test_split_model_saves_and_loads(digits, tmp_path):
    torch.manual_seed(0)
    model = UntraceableNet().eval()
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    adaptor.save(q, str(tmp_path / "split"))
    loaded = adaptor.load(str(tmp_path / "split"))
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.allclose(loaded(x), q(x), atol=1e-5)


def test_inspect_tensor_gives_fp32_and_int8_activations_per_op(trained_cnn, digits):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    ops = ["features.0", "features.3", "fc1", "fc2"]
    fp32 = adaptor.inspect_tensor(trained_cnn, digits[1], ops, [0, 2])
    int8 = adaptor.inspect_tensor(q, digits[1], ops, [0, 2])
    for op in ops:
        assert len(fp32[op]) == len(int8[op]) == 2
        for a, b in zip(fp32[op], int8[op]):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            # same activations up to quantization error: conv outputs include the fused batch-norm and relu
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    assert (fp32["features.0"][0] >= 0).all()
    with torch.no_grad():
        assert np.allclose(fp32["fc2"][0], trained_cnn(digits[1][0][0]).numpy(), atol=1e-4)


def test_inspect_tensor_covers_add_and_cat(digits):
    torch.manual_seed(0)
    model = ResidualNet().eval()
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    ops = ["conv_a", "add", "cat"]
    fp32 = adaptor.inspect_tensor(model, digits[1], ops, [1])
    int8 = adaptor.inspect_tensor(q, digits[1], ops, [1])
    for op in ops:
        assert len(fp32[op]) == len(int8[op]) == 1, op
        a, b = fp32[op][0], int8[op][0]
        assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97, op
    assert fp32["cat"][0].shape[1] == 32
    assert (fp32["add"][0] >= 0).all()  # the add's output is taken after the relu fused with it
    assert type(q.get_submodule("conv_a")).__name__ == "Conv2d"  # the int8 model is left as it was


def test_fingerprint_tracks_weights(trained_cnn):
    adaptor = make_adaptor()
    a = adaptor.fingerprint(trained_cnn)
    assert a == adaptor.fingerprint(trained_cnn)
    other = type(trained_cnn)(width=16)
    other.load_state_dict(trained_cnn.state_dict())
    assert adaptor.fingerprint(other) == a
    with torch.no_grad():
        other.fc2.bias[0] += 1
    assert adaptor.fingerprint(other) != a


def test_missing_torch_names_the_install_command():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from ilit import registry\n"
            "try:\n    registry.load('adaptor', 'pytorch')\n"
            "except Exception as e:\n    print(type(e).__name__, e.__cause__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "PluginLoadError" in out and "pip install 'ilit-pytorch[torch]'" in out


def test_string_annotations_do_not_stop_torchscript(digits, tmp_path):
    ns = {}
    exec("from __future__ import annotations\nimport torch\nfrom torch import nn\n"
         "class Annotated(nn.Module):\n"
         "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(64, 10)\n"
         "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        return self.fc(torch.flatten(x, 1))\n", ns)
    model = ns["Annotated"]().eval()
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    adaptor.save(q, str(tmp_path / "a"))
    assert json.loads((tmp_path / "a" / META_FILE).read_text())["format"] == "torchscript"


def test_infer_and_evaluate_leave_the_int8_model_unrun(trained_cnn, digits):
    """Tuning evaluates on a copy, so the returned model still picks its kernels on its first real batch."""
    from conftest import Accuracy

    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    first = adaptor.evaluate(q, digits[1], Accuracy())
    calls = []
    q.register_forward_pre_hook(lambda m, a: calls.append(1))
    assert adaptor.evaluate(q, digits[1], Accuracy()) == first
    adaptor.infer(q, digits[1][0][0])
    assert calls == []
    fp32_calls = []
    h = trained_cnn.register_forward_pre_hook(lambda m, a: fp32_calls.append(1))
    adaptor.infer(trained_cnn, digits[1][0][0])  # an fp32 model runs as it is
    h.remove()
    assert fp32_calls == [1]
