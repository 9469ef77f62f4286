"""ilit-pytorch on transformers (not a test): speed of a BERT-shaped encoder, and accuracy with outliers.

Speed (1 thread by default, timed in process CPU time; interleaved rounds, the order rotated each round;
median per variant, ratios to FP32 eager):
a 6-layer encoder, hidden 384, 12 heads, separate q/k/v Linears, GELU MLP 1536, batch 16 x seq 128
(random weights; float token embeddings as input):
  FP32 eager | FP32 torch.compile (inductor, freezing) | ilit dynamic
  | ilit static (PT2E, its default backend for this model) | ilit static pinned to FX (ILIT_PYTORCH_BACKEND=fx)
  | PT2E by hand (torchao 0.18 X86InductorQuantizer global config, torch.compile with freezing)

Accuracy: a small pre-LN transformer trained here on scikit-learn digits (8 rows of 8 pixels as a
sequence), then given LayerNorm outliers (a few channels of every LayerNorm scaled 20-100x and the
Linears reading them compensated, so FP32 is unchanged). ilit static tunes it twice, 10 trials at
most, 1% relative: with SmoothQuant removed from the space, and with it (the default).

Run it alone: ``flock /tmp/ilit-bench.lock python benchmarks/pytorch_transformer.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List

from machine import isa  # benchmarks/machine.py (this script's own directory is on sys.path)

import numpy as np
import torch
from torch import nn

import ilit
from ilit.tune_cfg import is_quantized

warnings.filterwarnings("ignore")




# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    """A pre-LN transformer block with separate q/k/v Linears (BERT/OPT-style Linear layout)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class Encoder(nn.Module):
    def __init__(self, dim: int = 384, depth: int = 6, heads: int = 12, mlp: int = 1536, classes: int = 2,
                 in_dim: int = 0, seq: int = 128) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.embed = nn.Linear(in_dim, dim) if in_dim else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(1, seq, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_dim:
            x = x.reshape(x.shape[0], -1, self.in_dim)
        h = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(h).mean(1))


def inject_outliers(model: nn.Module, seed: int = 0, channels: int = 3, low: float = 20,
                    high: float = 100) -> nn.Module:
    """Scale ``channels`` output channels of each block's LayerNorms by low-high x; compensate in the readers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            for ln, readers in ((b.ln1, (b.q, b.k, b.v)), (b.ln2, (b.fc1,))):
                idx = torch.randperm(ln.weight.numel(), generator=g)[:channels]
                f = low + (high - low) * torch.rand(channels, generator=g)
                ln.weight[idx] *= f
                ln.bias[idx] *= f
                for lin in readers:
                    lin.weight[:, idx] /= f
    return model


# ----------------------------------------------------------------------------- speed
def _tune(model: nn.Module, approach: str, calib: List[Any], ws: str, notes: List[str]) -> nn.Module:
    conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [len(calib)]},
            "quantization": {"approach": approach},
            "tuning": {"accuracy_criterion": {"relative": 0.01}, "objective": "performance", "max_trials": 1,
                       "workspace": {"path": ws}}}
    # speed only: every config "meets" (the accuracy part below tunes for real)
    tuner = ilit.Tuner(conf)
    q = tuner.tune(model, q_dataloader=calib, eval_func=lambda m: 1.0)
    best = tuner.best_trial
    if best is not None and best.ratio:
        notes.append(f"{type(q).__name__} ({approach}): ilit's performance objective measured {1 / best.ratio:.2f}x "
                     f"the FP32 model (eager), 1 thread")
    return q


def _pt2e(model: nn.Module, example: torch.Tensor, calib: List[Any]) -> Callable[..., Any]:
    import torch._inductor.config as ind
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    ind.freezing = True
    exported = torch.export.export(model, (example,), strict=False).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x, _ in calib:
            prepared(x)
    return torch.compile(convert_pt2e(prepared))


def speed(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = Encoder(depth=args.depth).eval()
    x = torch.randn(args.batch, 128, 384)
    calib = [(torch.randn(args.batch, 128, 384), None) for _ in range(2)]
    import torch._inductor.config as ind
    ind.freezing = True
    variants: Dict[str, Callable[..., Any]] = {"fp32 eager": model}
    t0 = time.perf_counter()
    variants["fp32 compiled"] = torch.compile(copy.deepcopy(model))
    notes: List[str] = []
    with tempfile.TemporaryDirectory() as ws:
        variants["ilit dynamic"] = _tune(model, "post_training_dynamic_quant", calib, os.path.join(ws, "d"), notes)
        os.environ.pop("ILIT_PYTORCH_BACKEND", None)
        try:  # the default backend: PT2E; its objective timed the compiled candidate, which the model keeps
            variants["ilit static (pt2e)"] = _tune(model, "post_training_static_quant", calib, os.path.join(ws, "p"),
                                                   notes)
        except Exception as exc:  # noqa: BLE001
            print(f"ilit static (pt2e): not measured ({type(exc).__name__}: {exc})")
        os.environ["ILIT_PYTORCH_BACKEND"] = "fx"
        try:
            variants["ilit static (fx)"] = _tune(model, "post_training_static_quant", calib, os.path.join(ws, "s"),
                                                 notes)
        finally:
            del os.environ["ILIT_PYTORCH_BACKEND"]
    try:
        variants["pt2e by hand"] = _pt2e(copy.deepcopy(model), x, calib)
    except Exception as exc:  # noqa: BLE001 - torchao missing or an export failure: say so, keep the rest
        print(f"pt2e by hand: not measured ({type(exc).__name__}: {exc})")
    with torch.no_grad():
        for name, m in variants.items():  # warm-up: compiles the compiled ones
            for _ in range(2):
                m(x)
    print(f"set-up (tuning, export, compile, warm-up): {time.perf_counter() - t0:.0f} s")
    times: Dict[str, List[float]] = {k: [] for k in variants}
    clock = time.process_time if args.threads == 1 else time.perf_counter  # 1 thread: CPU time, robust to load
    names = list(variants)
    with torch.no_grad():
        for r in range(args.rounds):  # interleaved, the order rotated every round
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = clock()
                variants[name](x)
                times[name].append(clock() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base, comp = med["fp32 eager"], med["fp32 compiled"]
    print(f"\nencoder {args.depth}x384, 12 heads, batch {args.batch} x seq 128, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds, ISA {isa()}, load {os.getloadavg()}")
    print(f"{'variant':<20} {'median ms':>10} {'spread':>7} {'vs eager':>9} {'vs compiled':>12}")
    for k, v in med.items():
        spread = (max(times[k]) - min(times[k])) / v
        print(f"{k:<20} {1000 * v:>10.1f} {spread:>7.2f} {base / v:>8.2f}x {comp / v:>11.2f}x")
    for name in ("ilit static (fx)", "ilit static (pt2e)"):
        if name in med:
            s = med[name]
            print(f"{name} vs ilit dynamic: {med['ilit dynamic'] / s:.2f}x"
                  + (f"; vs pt2e by hand: {med['pt2e by hand'] / s:.2f}x" if "pt2e by hand" in med else ""))
    for note in notes:
        print(note)
    print("goals (static): >= 2.0x fp32 eager, >= 1.3x fp32 compiled, >= 1.2x ilit dynamic, >= 1.0x pt2e by hand")


# ----------------------------------------------------------------------------- accuracy
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    cut = 1300
    return ([(x[i:i + 64], y[i:i + 64]) for i in range(0, cut, 64)],
            [(x[i:i + 100], y[i:i + 100]) for i in range(cut, len(y), 100)])


def _accuracy(model: Any, data: List[Any]) -> float:
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / sum(len(y) for _, y in data)


def accuracy(args: argparse.Namespace) -> None:
    from ilit_pytorch import smoothquant

    torch.manual_seed(0)
    train, test = _digits()
    model = Encoder(dim=64, depth=2, heads=4, mlp=128, classes=10, in_dim=8, seq=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.epochs):
        for xb, yb in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    model = inject_outliers(model.eval(), channels=args.channels, low=args.low, high=args.high)
    fp32 = _accuracy(model, test)
    print(f"\noutlier transformer (digits, 2 pre-LN blocks, dim 64; {args.channels} channels per LayerNorm scaled "
          f"{args.low:g}-{args.high:g}x): FP32 top-1 {fp32:.4f}")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    alphas = smoothquant.ALPHAS
    for label, offered in (("static without SmoothQuant", ()), ("static with SmoothQuant (default)", alphas)):
        smoothquant.ALPHAS = offered
        with tempfile.TemporaryDirectory() as ws:
            conf = {"framework": {"name": "pytorch"}, "calibration": {"iterations": [4]},
                    "quantization": {"approach": "post_training_static_quant"},
                    "tuning": {"metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                               "objective": "performance", "max_trials": 10, "workspace": {"path": ws}}}
            tuner = ilit.Tuner(conf)
            q = tuner.tune(model, q_dataloader=train, eval_dataloader=test)
        trials = tuner.history.trials
        met = [t for t in trials if t.meets]
        print(f"{label}: {len(trials)} trials, "
              + (f"met 1% at trial {met[0].trial}" if met else "did not meet 1%")
              + "; trials: " + ", ".join(f"{t.trial}:{t.accuracy:.4f}" + ("(sq)" if t.tune_cfg.get("recipes") else "")
                                         for t in trials))
        if q is not None and tuner.best_trial is not None:
            cfg = tuner.best_trial.tune_cfg
            int8 = [n for n in linears if n in cfg["ops"] and is_quantized(cfg["ops"][n])]  # not fp32, not bf16
            print(f"  returned: top-1 {_accuracy(q, test):.4f} ({(_accuracy(q, test) / fp32 - 1) * 100:+.2f}%), "
                  f"{len(int8)}/{len(linears)} Linear layers INT8 ({100 * len(int8) / len(linears):.0f}%), "
                  f"recipe {cfg.get('recipes', 'none')}")
    smoothquant.ALPHAS = alphas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--channels", type=int, default=8, help="outlier channels per LayerNorm (of 64)")
    p.add_argument("--low", type=float, default=20)
    p.add_argument("--high", type=float, default=100)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    np.random.seed(0)
    if not args.skip_accuracy:
        accuracy(args)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
