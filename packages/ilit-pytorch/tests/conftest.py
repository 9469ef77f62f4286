"""Models and data for the ilit-pytorch tests: real digits data (shipped with scikit-learn), small nets."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

torch.manual_seed(0)
torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*deprecated.*")

# the demo's model, from the demo itself (conv-bn-relu x3 with pooling, then two linears)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples"))
from pytorch_digits_demo import DigitsCNN  # noqa: E402,F401


class ResidualNet(nn.Module):
    """A residual add and a concatenation, so functional ops are tunable too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.conv_b = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.relu(self.bn_a(self.conv_a(x)) + x)
        z = torch.cat([y, self.conv_b(y)], 1)
        return self.fc(torch.flatten(self.pool(z), 1))


class Gate(nn.Module):
    """Data-dependent control flow: FX cannot trace it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        if x.mean() > 0:
            return torch.relu(self.proj(x))
        return self.proj(x)


class UnscriptableNet(nn.Module):
    """A lambda attribute: TorchScript cannot compile it, and without an example it is saved as a state dict."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.fn = lambda t: t * 2

    def forward(self, x):
        return self.fn(self.fc(x))


class UntraceableNet(nn.Module):
    """A traceable conv stem, a data-dependent gate, then a real transformer encoder and a head."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.gate = Gate(32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.batch_first = batch_first
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        f = self.stem(x)                              # (N, 32, 8, 8)
        seq = f.flatten(2).transpose(1, 2)            # (N, 64, 32)
        seq = self.gate(seq)
        if not self.batch_first:
            seq = seq.transpose(0, 1)
        seq = self.encoder(seq)
        if not self.batch_first:
            seq = seq.transpose(0, 1)
        return self.head(seq.mean(1))


class RecurrentNet(nn.Module):
    """Rows of a digit as a sequence: Linear, LSTM, GRU, Linear (the dynamic approach's ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.gru = nn.GRU(32, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        seq = x.reshape(x.shape[0], 8, 8)
        h, _ = self.lstm(torch.relu(self.embed(seq)))
        h, _ = self.gru(h)
        return self.head(h[:, -1])


class Accuracy:
    """Argmax accuracy on numpy arrays (the tests' own metric, besides ilit-metrics' topk)."""

    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = self.total = 0

    def update(self, preds, labels) -> None:
        self.correct += int((np.asarray(preds).argmax(1) == np.asarray(labels)).sum())
        self.total += len(labels)

    def result(self) -> float:
        return self.correct / max(self.total, 1)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def train(model: nn.Module, data, epochs: int, lr: float = 3e-3) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for xb, yb in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    """(train batches, test batches) of scikit-learn's digits, 8x8 images scaled to [0, 1]."""
    x, y = _digits()
    return batches(x[:1300], y[:1300], 64), batches(x[1300:], y[1300:], 100)


@pytest.fixture(scope="session")
def trained_cnn(digits):
    torch.manual_seed(0)
    return train(DigitsCNN(width=16), digits[0], epochs=3)


@pytest.fixture(autouse=True)
def _backend(monkeypatch):
    """The static approach's backend for tests: FX, which these tests were written for and assert on (quantized
    modules, TorchScript files, FX edges, functional add/cat ops). PT2E, the default for models torch.export
    captures, and the choice between the two are tested in test_pt2e.py, which sets its own.
    ``ILIT_TEST_PYTORCH_BACKEND=default`` runs the suite on the default choice instead (to see what it changes).
    No test compiles: a PT2E candidate is timed on its reference graph unless a test asks otherwise."""
    wanted = os.environ.get("ILIT_TEST_PYTORCH_BACKEND", "fx")
    if wanted == "default":
        monkeypatch.delenv("ILIT_PYTORCH_BACKEND", raising=False)
    else:
        monkeypatch.setenv("ILIT_PYTORCH_BACKEND", wanted)
    monkeypatch.setenv("ILIT_PYTORCH_PT2E_TIMING", "reference")


@pytest.fixture(autouse=True)
def _ilit_logs(caplog):
    caplog.set_level(logging.INFO, logger="ilit")
    yield


@pytest.fixture(autouse=True)
def _no_bf16(monkeypatch):
    """bf16 fallback off unless a test turns it on (test_bf16.py): it is offered only on AMX / AVX512-BF16
    CPUs, and the other tests must tune the same way on every machine."""
    monkeypatch.setenv("ILIT_PYTORCH_BF16", "0")
    yield


def accuracy(model, data) -> float:
    m = Accuracy()
    with torch.no_grad():
        for xb, yb in data:
            m.update(model(xb).numpy(), yb.numpy())
    return m.result()


def make_adaptor(conf=None):
    """A PyTorchAdaptor for a config dict (framework pytorch, 2 calibration batches unless given)."""
    from ilit import load_config
    from ilit_pytorch import PyTorchAdaptor

    conf = dict(conf or {})
    conf.setdefault("framework", {"name": "pytorch"})
    conf.setdefault("calibration", {"iterations": 2})
    return PyTorchAdaptor(load_config(conf))


def space_for(adaptor, model):
    from ilit.space import TuningSpace

    return TuningSpace.build(adaptor.query_fw_capability(model), adaptor.config)


def uniform_cfg(adaptor, model, weight=None, activation=None, iterations=2, fallback=()):
    """A tune_cfg giving every op the same choice (defaults: sym per-channel int8 weights, asym minmax uint8)."""
    space = space_for(adaptor, model)
    w = {"dtype": "int8", "scheme": "sym", "granularity": "per_channel", "algorithm": "minmax", **(weight or {})}
    a = {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor", "algorithm": "minmax", **(activation or {})}
    cfg = space.make_config({"weight": w, "activation": a}, iterations)
    return space.with_fallback(cfg, fallback) if fallback else cfg


class PreLNBlock(nn.Module):
    """A pre-LayerNorm transformer block with separate q/k/v Linears (the OPT/LLaMA layout SmoothQuant targets)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class PostLNBlock(PreLNBlock):
    """A post-LayerNorm (BERT) block: each LayerNorm's output feeds the next Linears and the residual add."""

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (f(x).reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = self.ln1(x + self.out((att @ v).transpose(1, 2).reshape(n, t, d)))
        return self.ln2(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


class TinyTransformer(nn.Module):
    """Digits as a sequence of 8 rows of 8 pixels: a Linear embedding, pre-LN blocks, a LayerNorm and a head.
    ``post_ln``: BERT's layout instead, the LayerNorm after the embedding and post-LN blocks."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, post_ln: bool = False) -> None:
        super().__init__()
        self.post_ln = post_ln
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, dim))
        self.blocks = nn.Sequential(*[(PostLNBlock if post_ln else PreLNBlock)(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        h = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos
        if self.post_ln:
            return self.head(self.blocks(self.norm(h)).mean(1))
        return self.head(self.norm(self.blocks(h)).mean(1))


def inject_outliers(model: nn.Module, factor: float = 60.0, channels: int = 3, seed: int = 0) -> nn.Module:
    """Scale a few output channels of every LayerNorm by ``factor`` and divide the same input columns of the
    Linears reading it: the FP32 function is unchanged, its activations get the outliers of pretrained transformers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.modules():
            if not isinstance(block, PreLNBlock):
                continue
            for ln, readers in ((block.ln1, (block.q, block.k, block.v)), (block.ln2, (block.fc1,))):
                idx = torch.randperm(ln.weight.numel(), generator=g)[:channels]
                ln.weight[idx] *= factor
                ln.bias[idx] *= factor
                for lin in readers:
                    lin.weight[:, idx] /= factor
    return model


def inject_post_ln_outliers(model: nn.Module, offset: float = 40.0, channels: int = 3, seed: int = 0) -> nn.Module:
    """A post-LN TinyTransformer's LayerNorm outputs get a few channels shifted by ``offset`` (BERT's systematic
    outlier dimensions), with the same FP32 function: the Linears reading them subtract ``W[:, j] * offset`` from
    their bias, and the sublayer added to them on the residual (or the head, after the last) ``offset``."""
    g = torch.Generator().manual_seed(seed)
    blocks = list(model.blocks)
    # (LayerNorm, the Linears reading it, the Linear whose output is added to it on the residual)
    pairs = [(model.norm, (blocks[0].q, blocks[0].k, blocks[0].v), blocks[0].out)]
    for i, b in enumerate(blocks):
        pairs.append((b.ln1, (b.fc1,), b.fc2))
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        pairs.append((b.ln2, (nxt.q, nxt.k, nxt.v) if nxt else (model.head,), nxt.out if nxt else None))
    with torch.no_grad():
        for ln, readers, residual in pairs:
            idx = torch.randperm(ln.bias.numel(), generator=g)[:channels]
            ln.bias[idx] += offset
            for lin in readers:
                lin.bias -= lin.weight[:, idx].sum(1) * offset
            if residual is not None:
                residual.bias[idx] -= offset
    return model


@pytest.fixture(scope="session")
def post_ln_transformer(digits):
    """A post-LN (BERT-layout) TinyTransformer trained on digits, then given LayerNorm output outliers (same FP32
    function); every LayerNorm also feeds a residual add, so SmoothQuant needs its explicit scales."""
    torch.manual_seed(0)
    model = train(TinyTransformer(post_ln=True), digits[0], epochs=5, lr=5e-3)
    return inject_post_ln_outliers(model, offset=300.0, channels=8)


@pytest.fixture(scope="session")
def outlier_transformer(digits):
    """A TinyTransformer trained on digits, then given LayerNorm outliers (same FP32 function)."""
    torch.manual_seed(0)
    model = train(TinyTransformer(), digits[0], epochs=5, lr=5e-3)
    return inject_outliers(model)
