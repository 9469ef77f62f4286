"""Interacting ops end to end: an outlier channel between two Linears needs both in fp32, and every strategy finds them.

The digits MLP's most active hidden channel after the second Linear is scaled up x1000 and the third
Linear's matching input scaled down (ReLU commutes with a positive scale, so the FP32 function is
unchanged). Per-tensor activation quantization of that tensor (by the producer's output or the
consumer's input) then rounds every other channel to nothing, on any ISA: only both ops in fp32 help.
"""

import pytest
import torch
from torch import nn

import ilit
from ilit.tune_cfg import fallback_ops

from conftest import make_adaptor, space_for

SCALE = 1000.0

@pytest.fixture(scope="module")
def outlier_mlp(digits):
    torch.manual_seed(0)
    train, test = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(10):
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    x = torch.cat([xb for xb, _ in test])
    with torch.no_grad():
        before = model(x)
        channel = int(model[:5](x).mean(0).argmax())  # the most active channel between Linear 2 and 3
        model[3].weight[channel] *= SCALE
        model[3].bias[channel] *= SCALE
        model[5].weight[:, channel] /= SCALE
        after = model(x)

    return model, before, after

def accuracy_of(test):
    x = torch.cat([xb for xb, _ in test])
    y = torch.cat([yb for _, yb in test])

    def accuracy(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())
    return accuracy

def conf(strategy, ws, **tuning):
    return {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [4]},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym", "algorithm": "minmax"}},
        "tuning": {"strategy": strategy, "accuracy_criterion": {"relative": 0.01}, "objective": "modelsize",
                   "random_seed": 3, "workspace": {"path": str(ws)}, **tuning},
    }

def test_the_outlier_keeps_the_fp32_function_and_breaks_int8(outlier_mlp, digits):
    model, before, after = outlier_mlp
    assert torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max()))
    adaptor = make_adaptor({"calibration": {"iterations": 4}})
    space = space_for(adaptor, model)
    assert space.ops == ["1", "3", "5", "7"]
    assert set(space.edges) == {("1", "3"), ("3", "5"), ("5", "7")}  # through the ReLUs
    acc = accuracy_of(digits[1])
    cfg = space.model_wise_configs()[0]
    int8 = acc(adaptor.quantize(cfg, model, digits[0]))
    pair = acc(adaptor.quantize(space.with_fallback(cfg, ["3", "5"]), model, digits[0]))
    assert int8 < 0.5 * acc(model)  # the outlier ruins all-INT8, whatever the kernels
    for single in ("3", "5"):
        assert acc(adaptor.quantize(space.with_fallback(cfg, [single]), model, digits[0])) < 0.5 * acc(model)
    assert pair >= 0.99 * acc(model)  # and the pair in fp32 meets a 1% goal

@pytest.mark.parametrize("strategy", ["basic", "mse", "bayesian"])
def test_every_strategy_keeps_the_interacting_pair_in_fp32(outlier_mlp, digits, tmp_path, strategy):
    model = outlier_mlp[0]
    acc = accuracy_of(digits[1])
    # timeout 0: the first passing config is returned; it holds the pair, and at most one op more
    first = ilit.Tuner(conf(strategy, tmp_path / "first"))
    assert first.tune(model, digits[0], eval_func=acc) is not None
    kept = set(fallback_ops(first.best_trial.tune_cfg))
    assert {"3", "5"} <= kept and len(kept) <= 3
    assert len(first.history.trials) <= 1 + 3 * 4
    # with a budget the search shrinks to exactly the pair (and the tuner returns it: the smallest model)
    budget = ilit.Tuner(conf(strategy, tmp_path / "budget", timeout=3600, max_trials=12))
    assert budget.tune(model, digits[0], eval_func=acc) is not None
    passing = [sorted(fallback_ops(t.tune_cfg)) for t in budget.history.trials if t.meets]
    assert ["3", "5"] in passing
    assert sorted(fallback_ops(budget.best_trial.tune_cfg)) == ["3", "5"]
