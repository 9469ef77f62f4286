"""Interacting ops end to end: an outlier channel between two Dense layers needs both in fp32, and every strategy
finds them; the adaptor reports who feeds whom.

The digits MLP's most active channel after the second Dense is scaled up x1000 and the third Dense's
matching input scaled down (ReLU commutes with a positive scale: the FP32 function is unchanged).
Per-tensor INT8 of that tensor, by either op, rounds the other channels to nothing on any ISA.
"""

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import ilit
from ilit.tune_cfg import fallback_ops

from conftest import GLUON_OPS, _train_gluon, make_adaptor

SCALE = 1000.0
PAIR = {"mlp_dense1_fwd", "mlp_dense2_fwd"}


def test_capability_edges_follow_the_graph(gluon_net):
    cap = make_adaptor().query_fw_capability(gluon_net)
    names = [n for n, _t in GLUON_OPS]
    assert [tuple(e) for e in cap["edges"]] == list(zip(names, names[1:]))  # a chain, by hand from the net


@pytest.fixture(scope="module")
def outlier_mlp(digits):
    mx.random.seed(5)
    net = nn.HybridSequential(prefix="mlp_")
    with net.name_scope():
        net.add(nn.Flatten(), nn.Dense(64, activation="relu"), nn.Dense(64, activation="relu"),
                nn.Dense(64, activation="relu"), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    _train_gluon(net, *digits["train"], epochs=10)
    x = mx.nd.array(digits["test"][0])
    before = net(x).asnumpy()
    hidden = net[2](net[1](net[0](mx.nd.array(digits["train"][0])))).asnumpy()
    channel = int(hidden.mean(0).argmax())  # the most active channel between the second and third Dense
    a, b = net[2], net[3]
    wa, ba, wb = a.weight.data(), a.bias.data(), b.weight.data()
    wa[channel] *= SCALE
    ba[channel] *= SCALE
    wb[:, channel] /= SCALE
    after = net(x).asnumpy()
    return net, before, after


def conf(strategy, ws, **tuning):
    return {
        "framework": {"name": "mxnet"},
        "calibration": {"iterations": [4]},
        "quantization": {"weight": {"granularity": "per_channel", "scheme": "sym"},
                         "activation": {"dtype": "uint8", "scheme": "asym", "algorithm": "minmax"}},
        "tuning": {"strategy": strategy, "accuracy_criterion": {"relative": 0.01}, "objective": "modelsize",
                   "random_seed": 3, "workspace": {"path": str(ws)}, **tuning},
    }


def test_the_outlier_keeps_the_fp32_function(outlier_mlp):
    _net, before, after = outlier_mlp
    assert np.allclose(before, after, rtol=1e-3, atol=1e-3 * np.abs(before).max())


@pytest.mark.parametrize("strategy", ["basic", "mse", "bayesian"])
def test_every_strategy_keeps_the_interacting_pair_in_fp32(outlier_mlp, digits, calib, tmp_path, strategy):
    net = outlier_mlp[0]
    xs, ys = digits["test"]
    first = ilit.Tuner(conf(strategy, tmp_path / "first"))

    def accuracy(m):
        return float((np.asarray(ilit.to_numpy(first.adaptor.infer(m, xs))).argmax(1) == ys).mean())

    assert first.tune(net, calib, eval_func=accuracy) is not None
    trials = first.history.trials
    assert trials[0].accuracy < 0.5 * first.baseline_accuracy  # all-INT8 is ruined by the outlier, on any ISA
    kept = set(fallback_ops(first.best_trial.tune_cfg))
    assert PAIR <= kept and len(kept) <= 3  # timeout 0: the first passing config, near-minimal
    n_ops = len(trials[0].tune_cfg["ops"])
    assert len(trials) <= 1 + 3 * n_ops
    # with a budget the shrinking pass reaches exactly the pair, the smallest passing model
    budget = ilit.Tuner(conf(strategy, tmp_path / "budget", timeout=3600, max_trials=12))
    assert budget.tune(net, calib, eval_func=accuracy) is not None
    assert set(fallback_ops(budget.best_trial.tune_cfg)) == PAIR
