"""Ops whose output never reaches the model's outputs (a pooler the model computes and drops) are not searched:
falling one back to fp32 cannot change accuracy, so a trial spent on it is wasted (issue 15)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_adaptor

import ilit
from ilit.tune_cfg import fallback_ops
from ilit_pytorch import backend


class DropsPooler(nn.Module):
    """An MLP that also runs a 'pooler' Linear and ignores its result, as a sentence-embedding model ignores
    BERT's pooler output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.pooler = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        _ = torch.tanh(self.pooler(h))
        return self.head(h)


BACKENDS = ["fx", pytest.param("pt2e", marks=pytest.mark.skipif(
    backend.pt2e_missing() is not None, reason="torchao is not installed (pip install 'ilit-pytorch[pt2e]')"))]


@pytest.mark.parametrize("which", BACKENDS)
def test_an_op_that_reaches_no_output_offers_no_fallback(which, monkeypatch, digits):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", which)
    torch.manual_seed(0)
    model = DropsPooler().eval()
    adaptor = make_adaptor({"quantization": {"approach": "post_training_static_quant"}})
    adaptor.example_inputs = digits[0][0][0]  # what tune sets before query_fw_capability
    cap = adaptor.query_fw_capability(model)["op_wise"]
    by_name = {name: c for (name, _), c in cap.items()}
    assert set(by_name) == {"fc1", "pooler", "head"}
    assert "fp32" not in by_name["pooler"]["weight"]["dtype"] and "fp32" not in by_name["pooler"]["activation"]["dtype"]
    for live in ("fc1", "head"):
        assert "fp32" in by_name[live]["weight"]["dtype"] and "fp32" in by_name[live]["activation"]["dtype"]


def test_the_fallback_search_never_spends_a_trial_on_a_dead_op(monkeypatch, digits, tmp_path):
    monkeypatch.setenv("ILIT_PYTORCH_BACKEND", "fx")
    torch.manual_seed(0)
    model = DropsPooler().eval()
    conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [2]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"strategy": {"name": "basic"}, "accuracy_criterion": {"relative": 0.01}, "max_trials": 12,
                       "workspace": {"path": str(tmp_path / "ws")}}}
    # every quantized model fails the goal, so the search walks the fallback candidates
    tuner = ilit.Tuner(conf)
    tuner.tune(model, q_dataloader=digits[0], eval_func=lambda m: 1.0 if m is model else 0.5)
    trials = tuner.history.trials
    fallen = [set(fallback_ops(t.tune_cfg)) for t in trials]
    assert any(fallen), "the search never reached its fallback phase"
    assert all("pooler" not in f for f in fallen)
    assert all(t.tune_cfg["ops"]["pooler"]["weight"]["dtype"] == "int8" for t in trials)
