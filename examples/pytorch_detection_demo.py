"""ilit detection demo: train a small single-stage detector on canvases of scikit-learn digits, tune it to INT8.

Run it with ``nox -s detection`` (or ``python examples/pytorch_detection_demo.py`` where ilit-core,
``ilit-metrics[coco]``, ilit-pytorch, torch and scikit-learn are installed). Nothing is downloaded: each
image is a 48x48 canvas with 0 to 3 digits from scikit-learn's ``load_digits`` pasted at random positions
and scales, so every box and class is known by construction.

The detector is CenterNet-shaped: its ``forward`` returns the raw head outputs (class heat-map logits,
box sizes, centre offsets), and decoding plus NMS run outside the model, in numpy, as a deployment would
run them. ilit quantizes the network only. The demo tunes it in both of ilit's usages:

- (b) ``eval_func(model) -> float``: your function runs the model, decodes and scores with ``cocomap``;
- (a) ``eval_dataloader`` + ``tuning.metric: {cocomap: ...}`` + ``postprocess=decode``: ilit runs the
  model and hands each batch's outputs (numpy) to ``postprocess``, whose per-image box dicts go to the metric.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import yaml
from torch import nn

import ilit

from digit_canvases import NUM_CLASSES, Target, decode, detection_arrays, encode, isa

Batch = Tuple[torch.Tensor, List[Target]]


def detection_data(n_train: int = 2000, n_test: int = 300, batch: int = 32,
                   seed: int = 0) -> Tuple[List[Batch], List[Batch]]:
    """Train and test batches ``(images (B, 1, 48, 48), [target per image])`` from disjoint digits."""
    x_tr, t_tr, x_te, t_te = detection_arrays(n_train, n_test, seed)

    def batches(x: np.ndarray, t: List[Target]) -> List[Batch]:
        xt = torch.from_numpy(x)
        return [(xt[i:i + batch], t[i:i + batch]) for i in range(0, len(t), batch)]
    return batches(x_tr, t_tr), batches(x_te, t_te)




# ---------------------------------------------------------------------------------------------- model
def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitDetector(nn.Module):
    """A CenterNet-shaped detector: a stride-4 backbone and three 1x1-conv heads on a 12x12 grid.

    ``forward`` returns the raw head outputs ``(heatmap_logits (B, 10, 12, 12), sizes (B, 2, 12, 12),
    offsets (B, 2, 12, 12))``; :func:`decode` turns them into boxes.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.backbone = nn.Sequential(_block(1, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.neck = _block(2 * w, 2 * w)
        self.heatmap = nn.Conv2d(2 * w, NUM_CLASSES, 1)
        self.size = nn.Conv2d(2 * w, 2, 1)
        self.offset = nn.Conv2d(2 * w, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)   # sigmoid = 0.1: the usual CenterNet prior

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.neck(self.backbone(x))
        return self.heatmap(f), self.size(f), self.offset(f)


# ---------------------------------------------------------------------------------------------- training
def _focal(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, per object."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1.0)


def train(model: DigitDetector, data: List[Batch], epochs: int, seed: int = 0) -> DigitDetector:
    torch.manual_seed(seed)
    encoded = [tuple(torch.from_numpy(a) for a in encode(t)) for _, t in data]
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * len(data))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(data), generator=g).tolist():
            heat, size, offset, mask = encoded[i]
            out_heat, out_size, out_offset = model(data[i][0])
            n = mask.sum().clamp(min=1.0)
            loss = (_focal(out_heat, heat) + 0.1 * (nn.functional.l1_loss(out_size * mask, size, reduction="sum") / n)
                    + nn.functional.l1_loss(out_offset * mask, offset, reduction="sum") / n)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def coco_map(model: nn.Module, data: List[Batch]) -> Dict[str, float]:
    """Every COCO number of ``model`` on ``data``: run it, decode, score with ilit_metrics' cocomap."""
    from ilit_metrics import CocoMAP

    metric = CocoMAP()
    with torch.no_grad():
        for images, targets in data:
            metric.update(decode(model(images)), targets)
    return metric.results()


# ---------------------------------------------------------------------------------------------- tuning
def write_config(workspace: str, usage: str) -> str:
    """The tuning config: static INT8, at most 1% relative loss of COCO mAP@[.5:.95], latency objective.

    Usage (a) names the metric (``cocomap``: mAP@[.5:.95], pycocotools' COCOeval); usage (b) needs none.
    """
    conf: Dict[str, Any] = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [10], "algorithm": {"activation": ["minmax", "kl"]}},
        "quantization": {
            "approach": "post_training_static_quant",
            "weight": {"dtype": "int8", "scheme": ["sym"], "granularity": ["per_channel"]},
            "activation": {"dtype": "uint8", "scheme": ["asym"], "granularity": "per_tensor"},
        },
        "tuning": {
            "strategy": "basic",
            "accuracy_criterion": {"relative": 0.01},
            "objective": "performance",
            "timeout": 0,
            "max_trials": 30,
            "random_seed": 1978,
            "workspace": {"path": workspace},
        },
    }
    if usage == "a":
        conf["tuning"]["metric"] = {"cocomap": None}
    os.makedirs(workspace, exist_ok=True)
    path = os.path.join(workspace, f"detection_{usage}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


def interleaved_latency(models: Sequence[nn.Module], images: torch.Tensor, rounds: int = 20,
                        reps: int = 3) -> Tuple[List[float], List[float]]:
    """Each model's median ms per forward on ``images``, timed interleaved (A B A B ...) so that the load of a
    shared machine hits all alike; and the median over rounds of each model's time / the first model's."""
    times: List[List[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:  # warm-up (oneDNN picks its kernels on the first run)
            for _ in range(3):
                m(images)
        for _ in range(rounds):
            for i, m in enumerate(models):
                t = time.perf_counter()
                for _ in range(reps):
                    m(images)
                times[i].append((time.perf_counter() - t) / reps * 1e3)
    base = np.asarray(times[0])
    return [float(np.median(t)) for t in times], [float(np.median(base / np.asarray(t))) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the FP32 detector (default 5)")
    parser.add_argument("--workspace", default="./ilit_workspace/pytorch_detection_demo",
                        help="where the YAMLs, history.json and best_model/ of both usages are written")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, 2-thread timings swing 20x)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train_data, test_data = detection_data()
    torch.manual_seed(0)
    model = train(DigitDetector(), train_data, args.epochs)
    n_test = sum(len(t) for _, t in test_data)
    n_boxes = sum(len(x["boxes"]) for _, t in test_data for x in t)
    print(f"trained DigitDetector ({sum(p.numel() for p in model.parameters()):,} parameters) on "
          f"{sum(len(t) for _, t in train_data)} canvases in {time.perf_counter() - t0:.1f}s; test: {n_test} "
          f"canvases, {n_boxes} digits, {sum(len(x['boxes']) == 0 for _, t in test_data for x in t)} empty")

    # usage (b): eval_func runs the model, decodes and scores; ilit only sees a float
    def eval_func(m: nn.Module) -> float:
        return coco_map(m, test_data)["map"]

    t1 = time.perf_counter()
    tuner_b = ilit.Tuner(write_config(os.path.join(args.workspace, "eval_func"), "b"))
    int8_b = tuner_b.tune(model, q_dataloader=train_data, eval_func=eval_func)
    t_b = time.perf_counter() - t1

    # usage (a): ilit runs the model over the loader; postprocess decodes each batch for tuning.metric cocomap
    t2 = time.perf_counter()
    tuner_a = ilit.Tuner(write_config(os.path.join(args.workspace, "eval_dataloader"), "a"))
    int8_a = tuner_a.tune(model, q_dataloader=train_data, eval_dataloader=test_data, postprocess=decode)
    t_a = time.perf_counter() - t2
    for usage, tuner, q in (("(b) eval_func", tuner_b, int8_b), ("(a) eval_dataloader", tuner_a, int8_a)):
        if q is None or tuner.best_trial is None:
            raise SystemExit(f"usage {usage}: no INT8 config met the accuracy goal; see {tuner.history_path}")

    # latency first, on fresh copies per batch size: oneDNN INT8 convs keep the kernels of the first shape they run
    lat1 = interleaved_latency([model, copy.deepcopy(int8_b), copy.deepcopy(int8_a)], test_data[0][0][:1])
    lat32 = interleaved_latency([model, copy.deepcopy(int8_b), copy.deepcopy(int8_a)], test_data[0][0])
    fp32 = coco_map(model, test_data)
    q_b, q_a = coco_map(int8_b, test_data), coco_map(int8_a, test_data)

    print()
    print(f"ilit INT8 tuning of DigitDetector on {n_test} digit canvases (torch {torch.__version__}, ISA {isa()}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'':30}{'FP32':>10}{'INT8 (b)':>10}{'INT8 (a)':>10}{'ratio (b)':>10}{'ratio (a)':>10}")
    for key, label in (("map", "COCO mAP@[.5:.95]"), ("map_50", "mAP@.5"), ("map_75", "mAP@.75"),
                       ("mar_100", "mAR@100")):
        print(f"  {label:30}{fp32[key]:>10.4f}{q_b[key]:>10.4f}{q_a[key]:>10.4f}{q_b[key] / fp32[key]:>10.4f}"
              f"{q_a[key] / fp32[key]:>10.4f}")
    for name, (ms, ratio) in (("latency, batch 1 (ms)", lat1), ("latency, batch 32 (ms)", lat32)):
        print(f"  {name:30}{ms[0]:>10.3f}{ms[1]:>10.3f}{ms[2]:>10.3f}{ratio[1]:>9.2f}x{ratio[2]:>9.2f}x")
    print(f"  (mAP ratio = INT8 / FP32; latency: {torch.get_num_threads()} thread(s), FP32 and INT8 timed interleaved, "
          "medians; speed-up = median over rounds of FP32 time / INT8 time)")
    for usage, tuner, t in (("(b) eval_func", tuner_b, t_b), ("(a) eval_dataloader + cocomap", tuner_a, t_a)):
        best = tuner.best_trial
        fallback = [name for name, o in best.tune_cfg["ops"].items() if not ilit.is_quantized(o)]
        print(f"  {usage}: {len(tuner.history.trials)} trial(s), best trial {best.trial}, "
              f"{len(best.tune_cfg['ops']) - len(fallback)}/{len(best.tune_cfg['ops'])} ops INT8, FP32 fallback: "
              f"{', '.join(fallback) or 'none'}; goal (relative mAP loss <= 1%) {'met' if best.meets else 'NOT met'}; "
              f"{t:.1f}s")
    print(f"  same INT8 model from both usages: {best_cfgs_equal(tuner_a, tuner_b)}; "
          f"all in {time.perf_counter() - t0:.1f}s; models in {args.workspace}/*/best_model")


def best_cfgs_equal(a: "ilit.Tuner", b: "ilit.Tuner") -> bool:
    return a.best_trial is not None and b.best_trial is not None and a.best_trial.tune_cfg == b.best_trial.tune_cfg


if __name__ == "__main__":
    main()
