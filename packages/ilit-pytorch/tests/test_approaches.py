"""Quantization-aware training, dynamic quantization, and models FX cannot trace."""

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import quantized as nniq
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import FakeQuantize

from conftest import RecurrentNet, UntraceableNet, accuracy, make_adaptor, train, uniform_cfg

from ilit_pytorch import backend


def test_qat_prepares_calls_q_func_and_converts(trained_cnn, digits):
    adaptor = make_adaptor({"quantization": {"approach": "quant_aware_training"}})
    cap = adaptor.query_fw_capability(trained_cnn)
    assert ("features.0", "ConvBnReLU2d") in cap["op_wise"]  # batch-norm kept for training, folded at convert
    assert cap["op_wise"][("features.0", "ConvBnReLU2d")]["activation"]["algorithm"] == ["minmax"]
    calls = []

    def q_func(model):
        calls.append(model)
        assert model.training
        assert any(isinstance(m, FakeQuantize) for m in model.modules())
        train(model, digits[0][:6], epochs=1, lr=1e-4)

    cfg = uniform_cfg(adaptor, trained_cnn)
    q = adaptor.quantize(cfg, trained_cnn, digits[0], q_func=q_func)
    assert len(calls) == 1
    assert isinstance(q.get_submodule("features.0"), nniq.ConvReLU2d)
    assert not q.training
    assert accuracy(q, digits[1]) >= accuracy(trained_cnn, digits[1]) - 0.05
    with pytest.raises(ValueError, match="q_func"):
        adaptor.quantize(cfg, trained_cnn, digits[0])


def test_dynamic_quantizes_linear_lstm_gru_and_keeps_fallbacks_fp32(digits):
    torch.manual_seed(0)
    model = RecurrentNet().eval()
    adaptor = make_adaptor({"quantization": {"approach": "post_training_dynamic_quant"}})
    cap = adaptor.query_fw_capability(model)
    assert list(cap["op_wise"]) == [("embed", "Linear"), ("lstm", "LSTM"), ("gru", "GRU"), ("head", "Linear")]
    assert cap["op_wise"][("lstm", "LSTM")]["activation"]["algorithm"] == ["minmax"]
    cfg = uniform_cfg(adaptor, model, fallback=["head"])
    q = adaptor.quantize(cfg, model, digits[0])
    assert adaptor.calibration_batches == 0  # dynamic: nothing to calibrate
    assert isinstance(q.embed, nnqd.Linear) and isinstance(q.lstm, nnqd.LSTM) and isinstance(q.gru, nnqd.GRU)
    assert type(q.head) is nn.Linear
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=0.05)
    per_tensor = adaptor.quantize(uniform_cfg(adaptor, model, weight={"granularity": "per_tensor"}), model, digits[0])
    assert per_tensor.embed.weight().qscheme() == torch.per_tensor_affine
    assert q.embed.weight().qscheme() == torch.per_channel_affine


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_model_fx_cannot_trace_is_still_quantized(digits, caplog, batch_first):
    torch.manual_seed(0)
    model = UntraceableNet(batch_first=batch_first).eval()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    adaptor = make_adaptor()
    ops = dict(adaptor.query_fw_capability(model)["op_wise"])
    assert "not FX-traceable" in caplog.text
    names = [n for n, _t in ops]
    assert names[:2] == ["stem.0", "stem.2"]
    assert {"gate.proj", "encoder.layers.0.linear1", "encoder.layers.0.linear2", "head"} <= set(names)
    assert not any("out_proj" in n for n in names)  # attention reads its weight directly: never swapped
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert isinstance(q.get_submodule("stem.0"), nniq.ConvReLU2d)
    assert isinstance(q.get_submodule("encoder.layers.0.linear1.m"), (nnq.Linear, nniq.LinearReLU))
    assert isinstance(q.get_submodule("gate.proj.m"), nnq.Linear)
    x = digits[1][0][0]
    with torch.no_grad():
        assert _cosine(q(x), model(x)) > 0.98
        with torch.inference_mode():
            q(x)  # the transformer's fused fast path must not break on swapped linears
    # fallback works on the split model too
    q2 = adaptor.quantize(uniform_cfg(adaptor, model, fallback=["encoder.layers.0.linear1"]), model, digits[0])
    assert type(q2.get_submodule("encoder.layers.0.linear1")) is nn.Linear


def test_a_split_model_that_cannot_run_falls_back_to_dynamic_linears(digits, caplog, monkeypatch):
    torch.manual_seed(0)
    model = UntraceableNet().eval()
    adaptor = make_adaptor()
    cfg = uniform_cfg(adaptor, model)
    real_convert = backend.convert

    def broken(p):  # a converted unit that raises when run
        c = real_convert(p)
        if any(isinstance(m, nnq.Linear) for m in c.modules()):
            c.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        return c
    monkeypatch.setattr(backend, "convert", broken)
    q = adaptor.quantize(cfg, model, digits[0])
    assert "falling back to dynamic quantization of its Linear layers" in caplog.text
    assert isinstance(q.head, nnqd.Linear)
    with torch.no_grad():
        assert _cosine(q(digits[1][0][0]), model(digits[1][0][0])) > 0.98


def test_qat_on_a_model_fx_cannot_trace(digits):
    torch.manual_seed(0)
    model = UntraceableNet().eval()
    adaptor = make_adaptor({"quantization": {"approach": "quant_aware_training"}})
    calls = []

    def q_func(prepared):
        calls.append(sum(isinstance(m, FakeQuantize) for m in prepared.modules()))
        train(prepared, digits[0][:3], epochs=1, lr=1e-4)

    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0], q_func=q_func)
    assert len(calls) == 1 and calls[0] > 0
    assert isinstance(q.get_submodule("stem.0"), nniq.ConvReLU2d)
    assert isinstance(q.get_submodule("head.m"), nnq.Linear)
    with torch.no_grad():
        assert torch.isfinite(q(digits[1][0][0])).all()
