"""ilit MXNet demo: train a small Gluon CNN on scikit-learn's digits, then tune it to INT8 (oneDNN) with ilit.

Run it with ``nox -s mxnet_demo`` (or ``python examples/mxnet_digits_demo.py`` where ilit-core, ilit-metrics,
ilit-mxnet, mxnet 1.9.1 with numpy 1.23.5 and scikit-learn are installed). Nothing is downloaded. It prints
the FP32 and INT8 accuracy, latency and saved size, the number of trials, and writes a report of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Tuple

import numpy as np
import yaml

import ilit
from ilit.objectives import saved_size

Batches = List[Tuple[np.ndarray, np.ndarray]]


def digits_batches(batch: int = 64, seed: int = 0) -> Tuple[Tuple[np.ndarray, np.ndarray], Batches, Batches]:
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) float32 in [0, 1]: a stratified 75/25 split, batched."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.float32), test_size=0.25, random_state=seed,
                                              stratify=d.target)

    def batches(xs: np.ndarray, ys: np.ndarray) -> Batches:
        return [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, len(ys), batch)]
    return (x_tr, y_tr), batches(x_tr, y_tr), batches(x_te, y_te)


def digits_cnn(train: Tuple[np.ndarray, np.ndarray], epochs: int, seed: int = 0):
    """Three conv-BN-ReLU blocks with pooling and two dense layers, hybridized and trained with Adam."""
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon import nn

    mx.random.seed(seed)
    net = nn.HybridSequential(prefix="digits_")
    with net.name_scope():
        net.add(nn.Conv2D(32, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                nn.Conv2D(64, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                nn.Conv2D(128, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(2), nn.Flatten(), nn.Dense(128, activation="relu"), nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.003})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x, y = train
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x), 64):
            sel = perm[i:i + 64]
            with autograd.record():
                loss = loss_fn(net(mx.nd.array(x[sel])), mx.nd.array(y[sel]))
            loss.backward()
            trainer.step(len(sel))
    mx.nd.waitall()
    return net


def write_config(workspace: str) -> str:
    """The tuning config as a user writes it: static INT8, the topk metric, at most 1% relative loss."""
    conf = {
        "framework": {"name": "mxnet"},
        "calibration": {"iterations": [10]},
        "quantization": {"approach": "post_training_static_quant"},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "objective": "performance", "timeout": 0, "max_trials": 50, "random_seed": 1978,
                   "workspace": {"path": workspace}},
    }
    os.makedirs(workspace, exist_ok=True)
    path = os.path.join(workspace, "mxnet_digits_demo.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs for the FP32 model (default 8)")
    parser.add_argument("--workspace", default="./ilit_workspace/mxnet_digits_demo",
                        help="where the YAML, history.json, best_model/ and report/ are written")
    args = parser.parse_args()

    import mxnet as mx

    t0 = time.perf_counter()
    train, train_data, test_data = digits_batches()
    model = digits_cnn(train, args.epochs)
    n_params = sum(p.data().size for p in model.collect_params().values())
    print(f"trained a Gluon digits CNN ({n_params:,} parameters) on {len(train[1])} digits in "
          f"{time.perf_counter() - t0:.1f}s")

    conf_path = write_config(args.workspace)
    print(f"config: {conf_path}")
    t1 = time.perf_counter()
    tuner = ilit.Tuner(conf_path)
    int8 = tuner.tune(model, q_dataloader=train_data, eval_dataloader=test_data)
    t_tune = time.perf_counter() - t1
    if int8 is None or tuner.best_trial is None:
        raise SystemExit(f"no INT8 config met the accuracy goal; see {tuner.history_path}")

    best = tuner.best_trial
    base_acc, int8_acc = tuner.baseline_accuracy, best.accuracy
    base_ms, int8_ms = tuner.baseline_objective, best.objective
    if best.ratio is not None:  # the FP32 latency measured beside the INT8 one, in the same window (less noise)
        base_ms = int8_ms / best.ratio
    fp32_size, int8_size = saved_size(model, tuner.adaptor), saved_size(int8, tuner.adaptor)
    n_test = sum(len(y) for _, y in test_data)
    batch = len(test_data[0][1])
    print()
    print(f"ilit INT8 tuning of a Gluon CNN on scikit-learn digits ({n_test} test images, mxnet {mx.__version__})")
    print(f"  {'':26}{'FP32':>12}{'INT8':>12}{'ratio':>10}")
    print(f"  {'top-1 accuracy':26}{base_acc:>12.4f}{int8_acc:>12.4f}{int8_acc / base_acc:>10.4f}")
    print(f"  {f'latency, batch {batch} (ms)':26}{base_ms:>12.3f}{int8_ms:>12.3f}{base_ms / int8_ms:>9.2f}x")
    print(f"  {'saved size (kB)':26}{fp32_size / 1e3:>12.1f}{int8_size / 1e3:>12.1f}{int8_size / fp32_size:>10.3f}")
    n_int8 = sum(1 for o in best.tune_cfg["ops"].values() if o["activation"]["dtype"] != "fp32")
    print(f"  trials: {len(tuner.history.trials)} (best: trial {best.trial}: "
          f"{best.tune_cfg['calibration']['iterations']} calibration batches, {n_int8}/{len(best.tune_cfg['ops'])} ops "
          f"INT8); tuning took {t_tune:.1f}s, all in {time.perf_counter() - t0:.1f}s")
    print(f"  accuracy goal: relative loss <= 1% -> {'met' if best.meets else 'NOT met'}; "
          f"INT8 model saved in {os.path.join(args.workspace, 'best_model')}")
    print("  (oneDNN's INT8 params file keeps FP32 weights and quantizes them at load time, so it is not smaller)")

    from ilit.report import write_report

    print(f"report: {write_report(args.workspace)}")


if __name__ == "__main__":
    main()
