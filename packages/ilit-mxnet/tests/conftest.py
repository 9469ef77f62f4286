"""Shared fixtures: scikit-learn's digits, a trained Gluon conv net and a trained symbolic (Module) model."""

from __future__ import annotations

import numpy as np
import pytest

import ilit
import mxnet as mx
from ilit_metrics import Topk
from mxnet import autograd, gluon
from mxnet.gluon import nn
from sklearn.datasets import load_digits

BATCH = 64


def batches(x: np.ndarray, y: np.ndarray, size: int = BATCH):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8
    y = d.target.astype(np.float32)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    return {"train": (x[:1300], y[:1300]), "test": (x[1300:], y[1300:])}


@pytest.fixture(scope="session")
def calib(digits):
    x, y = digits["train"]
    return batches(x, y, 32)


@pytest.fixture(scope="session")
def evalset(digits):
    return batches(*digits["test"])


def _train_gluon(net, x, y, epochs: int = 10) -> None:
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.003})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(1)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x), BATCH):
            sel = perm[i:i + BATCH]
            xb, yb = mx.nd.array(x[sel]), mx.nd.array(y[sel])
            with autograd.record():
                loss = loss_fn(net(xb), yb)
            loss.backward()
            trainer.step(len(sel))
    mx.nd.waitall()


def make_gluon_net():
    net = nn.HybridSequential(prefix="digits_")  # fixed names, whatever was built before
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(32, 3, padding=1, activation="relu"), nn.MaxPool2D(2),
                nn.Flatten(), nn.Dense(64, activation="relu"), nn.Dense(10))
    return net


def trained_gluon_net(digits, seed: int, epochs: int = 10):
    """make_gluon_net, initialized from ``seed``, hybridized and trained on the digits training split."""
    mx.random.seed(seed)
    net = make_gluon_net()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    _train_gluon(net, *digits["train"], epochs=epochs)
    return net


@pytest.fixture(scope="session")
def gluon_net(digits):
    return trained_gluon_net(digits, seed=7)


GLUON_OPS = [
    ("digits_conv0_fwd", "Convolution"),
    ("digits_conv1_fwd", "Convolution"),
    ("digits_pool0_fwd", "Pooling"),
    ("digits_flatten0_flatten0", "Flatten"),
    ("digits_dense0_fwd", "FullyConnected"),
    ("digits_dense1_fwd", "FullyConnected"),
]


def symbolic_net() -> mx.sym.Symbol:
    data = mx.sym.var("data")
    x = mx.sym.Convolution(data, num_filter=16, kernel=(3, 3), pad=(1, 1), name="conv1")
    x = mx.sym.Activation(x, act_type="relu", name="relu1")
    x = mx.sym.Convolution(x, num_filter=16, kernel=(3, 3), pad=(1, 1), name="conv2")
    x = mx.sym.Activation(x, act_type="relu", name="relu2")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="avg", name="pool1")
    x = mx.sym.Flatten(x, name="flat")
    x = mx.sym.FullyConnected(x, num_hidden=10, name="fc1")
    return mx.sym.SoftmaxOutput(x, name="softmax")


@pytest.fixture(scope="session")
def module_model(digits):
    """A bound, trained ``Module`` with a SoftmaxOutput head (its softmax_label is fed zeros at inference)."""
    mx.random.seed(11)
    x, y = digits["train"]
    it = mx.io.NDArrayIter(x, y, batch_size=BATCH, shuffle=True, label_name="softmax_label")
    mod = mx.mod.Module(symbolic_net(), data_names=["data"], label_names=["softmax_label"], context=mx.cpu())
    mod.fit(it, num_epoch=10, optimizer="adam", optimizer_params={"learning_rate": 0.003},
            initializer=mx.init.Xavier())
    return mod


def accuracy(adaptor, model, evalset) -> float:
    """Top-1 accuracy through the adaptor's evaluate and ilit-metrics' ``topk``."""
    return adaptor.evaluate(model, evalset, Topk(1))


def make_adaptor(**conf):
    from ilit_mxnet import MXNetAdaptor

    return MXNetAdaptor(ilit.load_config({"framework": {"name": "mxnet"}, **conf}))


def first_config(adaptor, model, conf=None):
    """The first model-wise tune_cfg the tuning space proposes for ``model``."""
    cfg = ilit.load_config({"framework": {"name": "mxnet"}, **(conf or {})})
    space = ilit.TuningSpace.build(adaptor.query_fw_capability(model), cfg)
    return space, space.model_wise_configs()[0]


def tracks_fp32(out: np.ndarray, ref: np.ndarray) -> bool:
    """Whether INT8 outputs track the FP32 ones, on any x86 CPU: cosine >= 0.99 and the largest error under 10% of the
    largest output. The error depends on the ISA (without VNNI oneDNN sums u8*s8 pairs in int16, which saturates):
    an untrained two-input net's worst error was 5.4% of its output range with oneDNN limited to AVX2."""
    a, b = out.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    return cosine >= 0.99 and float(np.abs(a - b).max()) < 0.1 * float(np.abs(b).max())
