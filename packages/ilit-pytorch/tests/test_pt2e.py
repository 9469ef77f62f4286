"""The PT2E backend (ILIT_PYTORCH_BACKEND=pt2e, torchao): op-wise fallback really runs fp32, tuning, FX fallback.

No test compiles: ilit evaluates the reference q/dq graph, and only calling the returned model compiles it.
"""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import Gate, TinyTransformer, make_adaptor, uniform_cfg

import ilit
from ilit_pytorch import backend

pytestmark = pytest.mark.skipif(backend.pt2e_missing() is not None,
                                reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')")


@pytest.fixture(autouse=True)
def _pt2e(monkeypatch):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "pt2e")


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
    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = Gate(64)
            self.head = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.gate(x.flatten(1)))

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
