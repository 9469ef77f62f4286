"""MXNet INT8 speedup: FP32 vs ilit's tuned INT8 vs the same model quantized by hand with quantize_net_v2.

Trains a VGG-style conv net (6 conv+BN+ReLU layers, 32-64-128 channels) on scikit-learn's digits,
upsampled from 8x8 to 32x32 so that convolution kernels dominate the run time, then in one run:
- FP32 latency (hybridized Gluon, static_alloc/static_shape, oneDNN fusion on);
- ilit's INT8 model (ilit.Tuner, Basic strategy, 1% relative accuracy goal) latency;
- the same net quantized by hand with ``mxnet.contrib.quantization.quantize_net_v2`` (naive
  calibration on the same batches, tensor-wise, quantized_dtype auto), hybridized the same way;
- top-1 accuracy on the held-out digits, the saved size (symbol + params), and the ratios.

Goals: INT8 >= 2.5x faster than FP32; ilit's INT8 at least as fast as by hand; relative
accuracy loss <= 1%. Run in the mxnet nox venv (MXNet 1.9.1, numpy 1.23.5):

    .nox/mxnet/bin/python benchmarks/mxnet_speedup.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import numpy as np


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(path) for f in fs)


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16, help="batch size for the latency measurement")
    ap.add_argument("--rounds", type=int, default=18, help="interleaved timing rounds")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import ilit
    import ilit_mxnet  # checks numpy before MXNet
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.contrib import quantization as mxq
    from mxnet.gluon import nn
    from sklearn.datasets import load_digits

    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((4, 4))).astype(np.float32)[:, None]  # N x 1 x 32 x 32
    y = d.target.astype(np.float32)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    xtr, ytr, xte, yte = x[:1300], y[:1300], x[1300:], y[1300:]

    net = nn.HybridSequential(prefix="vgg_")
    with net.name_scope():
        for c in (32, 32, "pool", 64, 64, "pool", 128, 128, "pool"):
            if c == "pool":
                net.add(nn.MaxPool2D(2))
            else:
                net.add(nn.Conv2D(c, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"))
        net.add(nn.GlobalAvgPool2D(), nn.Flatten(), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.002})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    t0 = time.perf_counter()
    for _epoch in range(args.epochs):
        perm = rng.permutation(len(xtr))
        for i in range(0, len(xtr), 64):
            sel = perm[i:i + 64]
            with autograd.record():
                loss = loss_fn(net(mx.nd.array(xtr[sel])), mx.nd.array(ytr[sel]))
            loss.backward()
            trainer.step(len(sel))
    mx.nd.waitall()
    train_s = time.perf_counter() - t0

    calib = [(xtr[i:i + 32], ytr[i:i + 32]) for i in range(0, 32 * 8, 32)]  # 8 batches, 256 images
    evalset = [(xte[i:i + 100], yte[i:i + 100]) for i in range(0, len(xte), 100)]

    class Top1(ilit.Metric):
        def reset(self) -> None:
            self.hit, self.n = 0, 0

        def update(self, preds: Any, labels: Any) -> None:
            self.hit += int((np.asarray(preds).argmax(1) == np.asarray(labels)).sum())
            self.n += len(labels)

        def result(self) -> float:
            return self.hit / self.n

    def accuracy(model: Callable[[Any], Any]) -> float:
        m = Top1()
        m.reset()
        for xb, yb in evalset:
            m.update(model(mx.nd.array(xb)).asnumpy(), yb)
        return m.result()

    # ---- ilit: Basic strategy, 1% relative, calibration on the 8 batches
    work = tempfile.mkdtemp(prefix="ilit-mx-bench-")
    conf = {
        "framework": {"name": "mxnet"},
        "calibration": {"iterations": [8]},
        # per_tensor first: the same weight granularity as the by-hand baseline (per_channel is tried next)
        "quantization": {"weight": {"granularity": ["per_tensor", "per_channel"]}},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.01}, "objective": "performance",
                   "workspace": {"path": os.path.join(work, "ws")}},
    }
    logging.getLogger("ilit").addHandler(logging.NullHandler())  # quiet trials; the summary is printed below
    logging.getLogger("ilit").setLevel(logging.WARNING)
    tuner = ilit.Tuner(conf)
    t0 = time.perf_counter()
    ilit_model = tuner.tune(net, calib, eval_func=accuracy)
    tune_s = time.perf_counter() - t0
    if ilit_model is None:
        print("ilit found no INT8 model meeting the goal:\n" + tuner.summary())
        return 1
    adaptor = tuner.adaptor

    # ---- by hand: quantize_net_v2 with the same calibration batches
    hand = mxq.quantize_net_v2(net, quantized_dtype="auto", quantize_granularity="tensor-wise",
                               calib_data=[[mx.nd.array(xb)] for xb, _ in calib], calib_mode="naive",
                               num_calib_examples=32 * 8)
    hand.hybridize(static_alloc=True, static_shape=True)
    # a second, identical by-hand model: how far two equal models' timings differ here (the noise floor)
    hand2 = mxq.quantize_net_v2(net, quantized_dtype="auto", quantize_granularity="tensor-wise",
                                calib_data=[[mx.nd.array(xb)] for xb, _ in calib], calib_mode="naive",
                                num_calib_examples=32 * 8)
    hand2.hybridize(static_alloc=True, static_shape=True)
    net.hybridize(static_alloc=True, static_shape=True)  # quantize_net_v2 re-hybridized it without the flags

    def _graph(symbol: Any) -> list:
        return [(n["op"], n["name"], n.get("attrs")) for n in json.loads(symbol.tojson())["nodes"]]

    same_graph = _graph(ilit_model.symbol) == _graph(hand._cached_graph[1])

    # time the model ilit saved (workspace/best_model), loaded fresh: the same call history as the by-hand one
    saved = adaptor.load(os.path.join(work, "ws", "best_model"))
    models: Dict[str, Callable[[Any], Any]] = {"FP32": net, "ilit INT8": saved, "by-hand INT8": hand,
                                                "by-hand #2": hand2}
    acc = {k: accuracy(m) for k, m in models.items()}

    # ---- sizes: the symbol + params each writes
    sizes = {}
    adaptor.save(net, os.path.join(work, "fp32"))
    sizes["FP32"] = _dir_size(os.path.join(work, "fp32"))
    adaptor.save(ilit_model, os.path.join(work, "ilit"))
    meta_file = os.path.join(work, "ilit", "ilit_mxnet.json")  # ilit's own notes, not part of the model
    sizes["ilit INT8"] = _dir_size(os.path.join(work, "ilit")) - os.path.getsize(meta_file)
    os.makedirs(os.path.join(work, "hand"))
    hand.export(os.path.join(work, "hand", "model"))
    sizes["by-hand INT8"] = sizes["by-hand #2"] = _dir_size(os.path.join(work, "hand"))

    # ---- latency: interleaved rounds, median of per-run times, batch 1 and batch N
    lat: Dict[str, Dict[int, float]] = {k: {} for k in models}
    for bs in (1, args.batch):
        xb = mx.nd.array(xte[:bs])
        times: Dict[str, List[float]] = {k: [] for k in models}
        for m in models.values():
            for _ in range(5):
                m(xb).wait_to_read()
        names = list(models)
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:  # rotate the order: no position bias
                m = models[k]
                for _ in range(args.runs):
                    t = time.perf_counter()
                    m(xb).wait_to_read()
                    times[k].append(time.perf_counter() - t)
        for k in models:
            lat[k][bs] = statistics.median(times[k]) * 1000

    best = tuner.best_trial
    q = ilit_model.meta
    print(f"MXNet {mx.__version__}, numpy {np.__version__}, ilit-mxnet {ilit_mxnet.__version__}; "
          f"threads OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    print(f"model: VGG-style 6x conv3x3+BN+ReLU (32-64-128 ch) on digits upsampled to 1x32x32; trained "
          f"{args.epochs} epochs in {train_s:.0f}s")
    print(f"ilit: {len(tuner.history.trials)} trial(s) in {tune_s:.1f}s; chosen: "
          f"quantized_dtype={q['quantized_dtype']} "
          f"granularity={q['granularity']} calibration={q['calibration']} fp32 ops={q['fp32_ops'] or 'none'} "
          f"(trial {best.trial}); calibration batches run: {adaptor.calibration_batches}")
    print(tuner.summary())
    print()
    hdr = f"{'model':<14}{'top-1':>8}{'b=1 ms':>10}{f'b={args.batch} ms':>11}{'size KB':>10}"
    print(hdr)
    print("-" * len(hdr))
    for k in models:
        print(f"{k:<14}{acc[k]:>8.4f}{lat[k][1]:>10.3f}{lat[k][args.batch]:>11.3f}{sizes[k] / 1024:>10.1f}")
    print()
    for bs in (1, args.batch):
        print(f"batch {bs:>2}: speedup over FP32: ilit {lat['FP32'][bs] / lat['ilit INT8'][bs]:.2f}x, by hand "
              f"{lat['FP32'][bs] / lat['by-hand INT8'][bs]:.2f}x; ilit vs by hand "
              f"{lat['by-hand INT8'][bs] / lat['ilit INT8'][bs]:.3f}x (>1 = ilit faster)")
    rel = (acc["FP32"] - acc["ilit INT8"]) / acc["FP32"]
    print(f"accuracy: relative loss ilit {rel * 100:.2f}% (goal <= 1%), by hand "
          f"{(acc['FP32'] - acc['by-hand INT8']) / acc['FP32'] * 100:.2f}%")
    print(f"size: ilit INT8 / FP32 = {sizes['ilit INT8'] / sizes['FP32']:.3f}, by hand / FP32 = "
          f"{sizes['by-hand INT8'] / sizes['FP32']:.3f} (oneDNN's INT8 conv keeps FP32 weights in the file and "
          f"quantizes them at load time)")
    for bs in (1, args.batch):
        sp = lat["FP32"][bs] / lat["ilit INT8"][bs]
        vs_hand = lat["by-hand INT8"][bs] / lat["ilit INT8"][bs]
        print(f"goals (batch {bs}): INT8 >= 2.5x FP32: {'met' if sp >= 2.5 else 'NOT met'} ({sp:.2f}x); ilit at least "
              f"as fast as by hand: {'met' if vs_hand >= 1.0 else 'NOT met'} ({vs_hand:.3f}x; two identical "
              f"by-hand models differ by {abs(1 - lat['by-hand INT8'][bs] / lat['by-hand #2'][bs]) * 100:.1f}% here)")
    print(f"ilit's INT8 graph is node for node the by-hand one: {'yes' if same_graph else 'no'}")
    print(f"goal: relative accuracy loss <= 1%: {'met' if rel <= 0.01 else 'NOT met'} ({rel * 100:.2f}%)")
    print("load:", os.popen("uptime").read().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
