"""save/load without pickle, inspect_tensor, fingerprints, and the error when torch is missing."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DigitsCNN, ResidualNet, UnscriptableNet, UntraceableNet, make_adaptor, uniform_cfg

from ilit.objectives import saved_size
from ilit_pytorch.serialize import (META_FILE, MODEL_FILE, STATE_FILE, ModelFileError, export_torchscript,
                                    load_torchscript_executing_code)


@pytest.mark.parametrize("approach, algorithm", [("post_training_static_quant", "kl"),
                                                 ("post_training_static_quant", "percentile"),
                                                 ("post_training_dynamic_quant", "minmax"),
                                                 ("quant_aware_training", "minmax")])
def test_save_load_round_trip_is_data_only_and_exact(approach, algorithm, trained_cnn, digits, tmp_path, monkeypatch):
    """The saved directory holds tensors and JSON only; load rebuilds the int8 model from the fp32 one, bit for bit."""
    from conftest import train

    adaptor = make_adaptor({"quantization": {"approach": approach}})
    cfg = uniform_cfg(adaptor, trained_cnn, activation={"algorithm": algorithm},
                      fallback=[] if approach.endswith("dynamic_quant") else ["fc2"])
    q_func = (lambda p: train(p, digits[0][:2], epochs=1)) if approach == "quant_aware_training" else None
    q = adaptor.quantize(cfg, trained_cnn, digits[0], q_func)
    adaptor.save(q, str(tmp_path / "int8"))
    meta = json.loads((tmp_path / "int8" / META_FILE).read_text())
    assert meta["format"] == "state_dict" and meta["adaptor"] == "pytorch" and meta["build"]["tune_cfg"] == cfg
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == [META_FILE, STATE_FILE]

    real_load, calls = torch.load, []

    def weights_only_load(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)

    def no_code(*a, **k):
        raise AssertionError("load must not unpickle or load TorchScript")
    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(torch.jit, "load", no_code)
    monkeypatch.setattr("pickle.load", no_code)
    fresh = make_adaptor({"quantization": {"approach": approach}})  # another process would have no cache
    loaded = fresh.load(str(tmp_path / "int8"), model=trained_cnn)
    assert calls == [True]
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert np.array_equal(adaptor.infer(loaded, x).numpy(), adaptor.infer(q, x).numpy())
    assert not loaded.training


def test_load_needs_the_fp32_model_and_refuses_another_one(trained_cnn, digits, tmp_path):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    adaptor.save(q, str(tmp_path / "int8"))
    with pytest.raises(ValueError, match="pass the FP32 model"):
        adaptor.load(str(tmp_path / "int8"))
    with pytest.raises(ModelFileError, match="pass the FP32 model"):
        adaptor.load(str(tmp_path / "int8"), model=DigitsCNN(width=8))  # same class, other widths


def test_saving_the_same_model_gives_the_same_bytes(trained_cnn, digits, tmp_path):
    """Resume under ``objective: modelsize`` needs the saved size of a model to be one number."""
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    blobs = []
    for i in range(4):
        adaptor.save(q if i % 2 else copy.deepcopy(q), str(tmp_path / str(i)))
        blobs.append(b"".join(p.read_bytes() for p in sorted((tmp_path / str(i)).iterdir())))
    assert len(set(blobs)) == 1
    again = make_adaptor().quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])  # a new quantize
    assert saved_size(again, adaptor) == len(blobs[0])


def test_export_torchscript_is_for_deployment_and_loading_it_is_an_explicit_opt_in(trained_cnn, digits, tmp_path):
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, trained_cnn), trained_cnn, digits[0])
    assert export_torchscript(q, str(tmp_path / "q.pt")) == "torchscript"
    back = load_torchscript_executing_code(str(tmp_path / "q.pt"))
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


def test_saved_int8_model_is_at_most_three_tenths_of_fp32(digits):
    model = DigitsCNN().eval()  # the demo's model (size does not depend on training)
    adaptor = make_adaptor()
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    ratio = saved_size(q, adaptor) / saved_size(model, adaptor)
    assert ratio <= 0.3, ratio


def test_an_fp32_model_saves_as_its_state_dict(tmp_path):
    torch.manual_seed(0)
    model = UnscriptableNet().eval()
    adaptor = make_adaptor()
    adaptor.save(model, str(tmp_path / "m"))
    assert (tmp_path / "m" / STATE_FILE).exists() and not (tmp_path / "m" / MODEL_FILE).exists()
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["build"] is None
    with pytest.raises(ValueError, match="pass the FP32 model"):
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
    loaded = make_adaptor().load(str(tmp_path / "split"), model=model)
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


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
    assert export_torchscript(q, str(tmp_path / "a.pt")) == "torchscript"


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
