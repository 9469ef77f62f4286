"""ilit demo: train a small CNN on scikit-learn's digits, then tune it to real INT8 with ilit.

Run it with ``nox -s demo`` (or ``python examples/pytorch_digits_demo.py`` where ilit-core, ilit-metrics,
ilit-pytorch, torch and scikit-learn are installed). Nothing is downloaded: the digits ship with
scikit-learn. It prints the FP32 and INT8 accuracy, latency and saved size, the speedup with its spread (INT8
and FP32 timed interleaved; on a busy machine it says the figure is uncertain), the number of trials, and ends
by writing a report of the run (``report/report.html`` in the workspace) and printing its path.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional, Tuple

import torch
import yaml
from torch import nn

import ilit
from ilit.objectives import saved_size

Batches = List[Tuple[torch.Tensor, torch.Tensor]]


class DigitsCNN(nn.Module):
    """Three conv-bn-relu blocks with pooling, then two linears (~0.23 M parameters) for 1x8x8 digits."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(4 * w * 4, 256)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(torch.flatten(self.features(x), 1))))


def digits_batches(train_batch: int = 64, test_batch: int = 64, seed: int = 0) -> Tuple[Batches, Batches]:
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) tensors in [0, 1]: a stratified 75/25 split, batched."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.images / 16.0, d.target, test_size=0.25, random_state=seed,
                                              stratify=d.target)

    def batches(x, y, size: int) -> Batches:
        xt = torch.tensor(x, dtype=torch.float32).unsqueeze(1)
        yt = torch.tensor(y, dtype=torch.long)
        return [(xt[i:i + size], yt[i:i + size]) for i in range(0, len(yt), size)]
    return batches(x_tr, y_tr, train_batch), batches(x_te, y_te, test_batch)


def train(model: nn.Module, data: Batches, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(data))
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for i in torch.randperm(len(data), generator=g).tolist():
            xb, yb = data[i]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    return model.eval()


def trained_digits_cnn(epochs: int = 6, seed: int = 0) -> Tuple[nn.Module, Batches, Batches]:
    """The demo's FP32 model, trained, with its train and test batches (the benchmark reuses this)."""
    torch.manual_seed(seed)
    train_data, test_data = digits_batches(seed=seed)
    return train(DigitsCNN(), train_data, epochs, seed), train_data, test_data


def write_config(workspace: str) -> str:
    """The tuning config as a user writes it: static INT8, the topk metric, at most 1% relative loss."""
    conf = {
        "framework": {"name": "pytorch"},
        "device": "cpu",
        "calibration": {"iterations": [10], "algorithm": {"activation": ["minmax", "kl"]}},
        "quantization": {
            "approach": "post_training_static_quant",
            "weight": {"dtype": "int8", "scheme": ["sym"], "granularity": ["per_channel", "per_tensor"]},
            "activation": {"dtype": "uint8", "scheme": ["asym"], "granularity": "per_tensor"},
        },
        "tuning": {
            "strategy": "basic",
            "metric": {"topk": 1},
            "accuracy_criterion": {"relative": 0.01},
            "objective": "performance",
            "timeout": 0,
            "max_trials": 50,
            "random_seed": 1978,
            "workspace": {"path": workspace},
        },
    }
    os.makedirs(workspace, exist_ok=True)
    path = os.path.join(workspace, "pytorch_digits_demo.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


def speedup_line(ratio: float, spread: float, reliable: bool, threads: Optional[int]) -> str:
    """The INT8 speedup with its uncertainty; on a machine too busy for a stable figure, it says so."""
    on = f"on {threads} thread{'s' if threads != 1 else ''}, " if threads else ""
    line = (f"  speedup: {1 / ratio:.2f}x +- {100 * spread:.0f}% (INT8 and FP32 timed interleaved, {on}median of the "
            f"per-round ratios; load average {os.getloadavg()[0]:.1f})")
    if not reliable:
        line += ("\n  the machine was too busy for a reliable figure: the speedup is uncertain (the rounds "
                 "disagreed by more than +-5%); run the demo again on a quieter machine")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="training epochs for the FP32 model (default 6)")
    parser.add_argument("--workspace", default="./ilit_workspace/pytorch_digits_demo",
                        help="where the YAML, history.json and best_model/ are written")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model, train_data, test_data = trained_digits_cnn(args.epochs)
    t_train = time.perf_counter() - t0
    print(f"trained DigitsCNN ({sum(p.numel() for p in model.parameters()):,} parameters) on "
          f"{sum(len(y) for _, y in train_data)} digits in {t_train:.1f}s")

    conf_path = write_config(args.workspace)
    print(f"config: {conf_path}")
    t1 = time.perf_counter()
    tuner = ilit.Tuner(conf_path)
    int8 = tuner.tune(model, q_dataloader=train_data, eval_dataloader=test_data)
    t_tune = time.perf_counter() - t1
    if int8 is None or tuner.best_trial is None:
        raise SystemExit(f"no INT8 config met the accuracy goal; see {tuner.history_path}")

    adaptor = tuner.adaptor
    best = tuner.best_trial
    base_acc, int8_acc = tuner.baseline_accuracy, best.accuracy
    # the INT8 model was timed interleaved with the FP32 model (Performance.compare): its latency is ratio x the
    # FP32 latency of the same rounds, and the speedup is 1 / ratio, +- the spread of the ratio between rounds
    ratio, spread = best.ratio or float("nan"), best.spread or 0.0
    int8_ms = best.objective
    base_ms = int8_ms / ratio
    fp32_size, int8_size = saved_size(model, adaptor), saved_size(int8, adaptor)
    n_test = sum(len(y) for _, y in test_data)
    batch = len(test_data[0][1])
    print()
    print(f"ilit INT8 tuning of DigitsCNN on scikit-learn digits ({n_test} test images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  {'':26}{'FP32':>12}{'INT8':>12}{'ratio':>10}")
    print(f"  {'top-1 accuracy':26}{base_acc:>12.4f}{int8_acc:>12.4f}{int8_acc / base_acc:>10.4f}")
    print(f"  {f'latency, batch {batch} (ms)':26}{base_ms:>12.3f}{int8_ms:>12.3f}{1 / ratio:>9.2f}x")
    print(f"  {'saved size (kB)':26}{fp32_size / 1e3:>12.1f}{int8_size / 1e3:>12.1f}{int8_size / fp32_size:>10.3f}")
    print(f"  trials: {len(tuner.history.trials)} (best: trial {best.trial}: "
          f"{best.tune_cfg['calibration']['iterations']} "
          f"calibration batches, {sum(1 for o in best.tune_cfg['ops'].values() if o['activation']['dtype'] != 'fp32')}"
          f"/{len(best.tune_cfg['ops'])} ops INT8); tuning took {t_tune:.1f}s, all in {time.perf_counter() - t0:.1f}s")
    print(f"  accuracy goal: relative loss <= 1% -> {'met' if best.meets else 'NOT met'}; "
          f"INT8 model saved in {os.path.join(args.workspace, 'best_model')}")
    print(speedup_line(ratio, spread, bool(best.reliable), getattr(tuner.objective, "threads", None)))

    from ilit.report import write_report  # HTML with charts (pip install 'ilit-core[report]'), else Markdown

    print(f"report: {write_report(args.workspace)}")


if __name__ == "__main__":
    main()
