"""The PT2E backend (torchao; the default for static where torch.export captures the model): op-wise fallback
really runs fp32, the same annotations as by-hand PT2E, tuning, the backend choice, what the objective times.

No test compiles: ilit evaluates the reference q/dq graph, and where the performance objective would compile a
candidate, torch.compile is replaced by a spy that records the call and returns the graph uncompiled.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from conftest import Gate, ResidualNet, TinyTransformer, make_adaptor, uniform_cfg

import ilit
from ilit_pytorch import backend

pytestmark = pytest.mark.skipif(backend.pt2e_missing() is not None,
                                reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')")


@pytest.fixture(autouse=True)
def _pt2e(monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")
    monkeypatch.setenv("ILIT_PYTORCH_PT2E_TIMING", "reference")  # no compile in tests (one test spies on it)


def _linear_weights(gm):
    """For each linear node of a converted graph: its module path and whether its weight is dequantized int8."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.linear.default:
            path = list(node.meta["nn_module_stack"].values())[-1][0]
            w = node.args[1]
            out[path] = w.op == "call_function" and "dequantize" in str(w.target)
    return out


def test_fallback_ops_run_in_fp32_on_pt2e(digits):
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    adaptor = make_adaptor()
    assert adaptor.backend_name == "pt2e"
    cap = adaptor.query_fw_capability(model)
    assert {name for name, _ in cap["op_wise"]} == {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    cfg = uniform_cfg(adaptor, model, fallback=["blocks.0.q", "head"])
    q = adaptor.quantize(cfg, model, digits[0])
    assert isinstance(q, backend.PT2EModel)
    int8 = _linear_weights(q.graph_module)
    assert int8["blocks.0.q"] is False and int8["head"] is False
    assert all(v for k, v in int8.items() if k not in ("blocks.0.q", "head"))
    # everything in fp32: the graph computes exactly the fp32 model
    all_fp32 = uniform_cfg(adaptor, model, fallback=list(cfg["ops"]))
    ref = adaptor.quantize(all_fp32, model, digits[0])
    x = digits[1][0][0]
    with torch.no_grad():
        torch.testing.assert_close(ref.graph_module(x), model(x), rtol=1e-5, atol=1e-5)
        assert not torch.equal(q.graph_module(x), model(x))
    assert q._compiled is None and ref._compiled is None  # nothing compiled for accuracy


def test_tune_on_pt2e_with_smoothquant_and_save(outlier_transformer, digits, tmp_path):
    conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [4]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01}, "objective": "performance",
                       "max_trials": 4, "workspace": {"path": str(tmp_path / "ws")}}}
    tuner = ilit.Tuner(conf)
    q = tuner.tune(outlier_transformer, q_dataloader=digits[0], eval_dataloader=digits[1])
    assert all(isinstance(t.tune_cfg["ops"], dict) for t in tuner.history.trials)
    if q is not None:
        assert isinstance(q, backend.PT2EModel) and q._compiled is None
        best = tuner.adaptor.load(str(tmp_path / "ws" / "best_model"), outlier_transformer)
        x = digits[1][0][0]
        with torch.no_grad():
            torch.testing.assert_close(best(x), q.graph_module(x), rtol=1e-4, atol=1e-4)


def test_a_model_export_cannot_capture_uses_fx_and_says_so(digits, caplog):
    model = Gated().eval()
    adaptor = make_adaptor()
    cfg = uniform_cfg(adaptor, model)
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = adaptor.quantize(cfg, model, digits[0])
    assert "torch.export cannot capture Gated" in caplog.text and "FX backend" in caplog.text
    assert not isinstance(q, backend.PT2EModel)
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())


def test_backend_choice_is_checked(monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="use fx .* or pt2e"):
        backend.requested_backend()


class Gated(torch.nn.Module):
    """Data-dependent control flow: torch.export cannot capture it (nor FX trace it as a whole)."""

    def __init__(self):
        super().__init__()
        self.gate = Gate(64)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.gate(x.flatten(1)))


def _static_conf(tmp_path, **tuning):
    return {"framework": {"name": "pytorch"}, "calibration": {"iterations": [2]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"accuracy_criterion": {"relative": 0.01}, "max_trials": 2,
                       "workspace": {"path": str(tmp_path / "ws")}, **tuning}}


def test_static_default_is_pt2e_where_export_captures_the_model_else_fx(monkeypatch, digits, tmp_path, caplog):
    monkeypatch.delenv("ILIT_PYTORCH_BACKEND")
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = ilit.Tuner(_static_conf(tmp_path)).tune(model, q_dataloader=digits[0], eval_func=lambda m: 1.0)
    assert isinstance(q, backend.PT2EModel)
    assert "TinyTransformer: PT2E backend (the default for static; torch.export captured it)" in caplog.text
    # a model export cannot capture gets FX at capability time: its FX space (with edges) and an FX model
    caplog.clear()
    adaptor = make_adaptor()
    adaptor.example_inputs = digits[0][0][0]  # what tune sets before query_fw_capability
    gated = Gated().eval()
    with caplog.at_level(logging.INFO, logger="ilit"):
        cap = adaptor.query_fw_capability(gated)
    assert "torch.export cannot capture Gated" in caplog.text and "FX backend for this model" in caplog.text
    assert "edges" in cap
    fx = adaptor.quantize(uniform_cfg(adaptor, gated), gated, digits[0])
    assert not isinstance(fx, backend.PT2EModel)
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in fx.modules())


def test_fx_override_and_missing_torchao_give_fx_and_say_why(monkeypatch, digits, caplog):
    model = TinyTransformer().eval()
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "fx")
    adaptor = make_adaptor()
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert not isinstance(q, backend.PT2EModel) and "FX backend (ILIT_PYTORCH_BACKEND=fx)" in caplog.text
    caplog.clear()
    monkeypatch.delenv("ILIT_PYTORCH_BACKEND")
    monkeypatch.setattr(backend, "pt2e_missing", lambda: "torchao is not importable (ImportError: test)")
    adaptor = make_adaptor()
    assert adaptor.backend_name == "fx"
    with caplog.at_level(logging.INFO, logger="ilit"):
        q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert not isinstance(q, backend.PT2EModel)
    assert "FX backend (torchao is not installed; pip install 'ilit-pytorch[pt2e]'" in caplog.text


def _qdq_counts(gm):
    """How many activation quantize ops and int8 weights a converted PT2E graph has, by target."""
    counts = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and "quantize_per" in str(node.target) and "dequantize" not in str(node.target):
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    frozen = sum(1 for n in gm.graph.nodes if n.op == "get_attr" and "_frozen_param" in str(n.target))
    return counts, frozen


def test_pt2e_quantizes_what_by_hand_pt2e_quantizes(digits):
    """ilit's uniform default config annotates the graph as X86InductorQuantizer's global config does by hand
    (conv+bn+add+relu fusion, cat, pooling), not only the Conv/Linear modules; a fallback op still runs fp32."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = digits[0][0][0]
    adaptor = make_adaptor()
    cfg = uniform_cfg(adaptor, model, activation={"algorithm": "kl"})
    ours = adaptor.quantize(cfg, model, digits[0]).graph_module
    reduce_range = backend.activation_range()[1] == 127
    exported = torch.export.export(model, (x,), strict=False).module()
    config = get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    quantizer = X86InductorQuantizer().set_global(config)
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for xb, _ in digits[0][:2]:
            prepared(xb)
    by_hand = convert_pt2e(prepared)
    acts, weights = _qdq_counts(ours)
    assert (acts, weights) == _qdq_counts(by_hand)
    assert weights == 4 and sum(acts.values()) > 4  # 3 convs + fc, and more activations than their inputs
    with torch.no_grad():
        torch.testing.assert_close(ours(x), by_hand(x), rtol=0, atol=0)
    fallback = adaptor.quantize(uniform_cfg(adaptor, model, fallback=["fc"]), model, digits[0]).graph_module
    linear = [n for n in fallback.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linear) == 1 and linear[0].args[1].op == "get_attr"  # fc's weight: the float parameter
    assert _qdq_counts(fallback)[1] == 3


def test_performance_times_the_compiled_candidate_only_when_it_meets_the_goal(monkeypatch, digits, tmp_path):
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("ILIT_PYTORCH_PT2E_TIMING", "compiled")
    compiled = []

    def spy_compile(fn, **kwargs):  # records what would be compiled; returns it uncompiled (no test compiles)
        compiled.append((fn, kwargs))
        return fn
    monkeypatch.setattr(torch, "compile", spy_compile)
    scores = iter([1.0, 0.0, 1.0])  # baseline, trial 1 misses the goal, trial 2 meets it

    def eval_func(model):
        return next(scores)
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    freezing = inductor_config.freezing  # set back by hand: monkeypatch's undo deletes config attributes
    inductor_config.freezing = False
    try:
        tuner = ilit.Tuner(_static_conf(tmp_path, objective="performance"))
        q = tuner.tune(model, q_dataloader=digits[0], eval_func=eval_func)
        frozen = inductor_config.freezing
    finally:
        inductor_config.freezing = freezing
    assert [t.meets for t in tuner.history.trials] == [False, True]
    assert isinstance(q, backend.PT2EModel)
    assert len(compiled) == 1 and compiled[0][0] is q.graph_module
    assert compiled[0][1] == {"dynamic": False} and frozen
    assert q._compiled is q.graph_module  # kept: the user's first call does not compile again
    assert tuner.history.trials[1].ratio is not None
    assert "_compiled" not in dict(q.named_children())  # not a submodule: not saved, not deep-copied
    twin = copy.deepcopy(q)  # a copy compiles its own graph (a copied compiled wrapper would run uncompiled)
    assert twin._compiled is None
    twin(digits[1][0][0])
    assert len(compiled) == 2 and compiled[1][0] is twin.graph_module is not q.graph_module


def test_pt2e_timing_choice_is_checked(monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_PT2E_TIMING", "jit")
    with pytest.raises(ValueError, match="use compiled .* or reference"):
        backend.pt2e_timing()


def test_inspect_tensor_on_pt2e_matches_the_fp32_ops(digits):
    """mse's per-op outputs from a PT2E model: the same ops, shapes and (up to int8 error) values as the FP32
    model's (after a conv's folded batch-norm and its ReLU, as FX's fused ops give them)."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    adaptor = make_adaptor()
    ops = [name for name, _ in adaptor.query_fw_capability(model)["op_wise"]]
    assert set(ops) == {"stem.0", "conv_a", "conv_b", "fc"}
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    int8 = adaptor.inspect_tensor(q, digits[0], ops, [0, 2])
    fp32 = adaptor.inspect_tensor(model, digits[0], ops, [0, 2])
    for name in ops:
        assert len(int8[name]) == len(fp32[name]) == 2, name
        for a, b in zip(int8[name], fp32[name]):
            assert a.shape == b.shape, name
            assert np.abs(a - b).max() <= 0.1 * np.abs(b).max() + 1e-6, name
    assert (fp32["stem.0"][0] >= 0).all() and (int8["stem.0"][0] >= 0).all()  # after the stem's ReLU


def test_mse_strategy_on_pt2e(digits, tmp_path, monkeypatch):
    from ilit_pytorch import PyTorchAdaptor

    inspected = []
    real = PyTorchAdaptor.inspect_tensor

    def spy(self, model, *args):
        out = real(self, model, *args)
        inspected.append((type(model).__name__, sum(len(v) for v in out.values())))
        return out
    monkeypatch.setattr(PyTorchAdaptor, "inspect_tensor", spy)
    torch.manual_seed(0)
    model = ResidualNet().eval()
    conf = _static_conf(tmp_path, strategy="mse", objective="modelsize", max_trials=5)
    scores = iter([1.0] + [0.0] * 4 + [1.0])  # baseline; the 4 model-wise configs miss; the first fallback meets

    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, q_dataloader=digits[0], eval_func=lambda m: next(scores))
    trials = tuner.history.trials
    assert all(t.error is None for t in trials), [t.error for t in trials]
    assert len(trials) == 5 and trials[-1].meets and isinstance(q, backend.PT2EModel)
    assert ("PT2EModel", 4) in [(k, min(n, 4)) for k, n in inspected]  # the int8 side had every op's outputs
    fallback = [name for name, op in trials[-1].tune_cfg["ops"].items() if op["activation"]["dtype"] == "fp32"]
    assert fallback  # mse ranked the ops by the inspected distances and fell back the first


def test_a_relu_module_called_twice_is_exported_strict(digits, caplog):
    """X86InductorQuantizer cannot annotate a non-strict export where one nn.ReLU is called twice (torchvision's
    ResNet blocks); ilit then exports with strict=True, and the model still gets PT2E."""
    class SharedRelu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.relu = torch.nn.ReLU()
            self.fc = torch.nn.Linear(4 * 64, 10)

        def forward(self, x):
            return self.relu(self.fc(torch.flatten(self.relu(self.conv(x)), 1)))

    model = SharedRelu().eval()
    adaptor = make_adaptor()
    adaptor.example_inputs = digits[0][0][0]
    with caplog.at_level(logging.INFO, logger="ilit"):
        cap = adaptor.query_fw_capability(model)
    assert "cannot annotate SharedRelu with torch.export(strict=False)" in caplog.text
    assert "SharedRelu: PT2E backend (ILIT_PYTORCH_BACKEND=pt2e; torch.export captured it, strict=True)" in caplog.text
    assert {name for name, _ in cap["op_wise"]} == {"conv", "fc"}
    q = adaptor.quantize(uniform_cfg(adaptor, model), model, digits[0])
    assert isinstance(q, backend.PT2EModel)
    x = digits[1][0][0]
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(q.graph_module(x).flatten(), model(x).flatten(), 0) > 0.99
