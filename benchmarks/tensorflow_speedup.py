"""TensorFlow: ilit's tuned INT8 TFLite model against Keras FP32, TFLite FP32 and a by-hand converter INT8.

Trains a small conv net on scikit-learn's digits, tunes it with ilit (Basic strategy, 1% relative
accuracy goal, performance objective), converts it by hand with the stock TFLite recipe, and prints
latency at batch 1 and 16, test accuracy, model size and the ratios, with the goals checked.

    python benchmarks/tensorflow_speedup.py [--rounds 5]   (in the nox tensorflow venv, or any with ilit-tensorflow)
On a shared machine: `flock /tmp/ilit-bench.lock python benchmarks/tensorflow_speedup.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import ilit  # noqa: E402
from ilit_tensorflow import TFLiteModel  # noqa: E402
from ilit_tensorflow.adaptor import run_converter  # noqa: E402
from ilit_tensorflow.model import default_threads  # noqa: E402

CAL_BATCH = 20
CAL_ITERATIONS = 10


def data() -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1100], y[:1100]), (x[1100:1300], y[1100:1300]), (x[1300:], y[1300:])


def build_model(train: Tuple[np.ndarray, np.ndarray], epochs: int) -> Any:
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    return model


def by_hand_int8(model: Any, calib: List[Tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The stock full-integer recipe from the TFLite documentation, with the same calibration batches."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x, _y in calib[:CAL_ITERATIONS])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return run_converter(conv)  # conv.convert(), its chatter kept off the terminal


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    for _ in range(max(5, runs // 10)):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def accuracy(run: Callable[[np.ndarray], Any], x: np.ndarray, y: np.ndarray) -> float:
    preds = np.concatenate([np.asarray(run(x[i:i + 50])).argmax(1) for i in range(0, len(x), 50)])
    return float((preds == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, models interleaved; the median is kept")
    ap.add_argument("--runs", type=int, default=200, help="timed calls per model per round")
    args = ap.parse_args()
    logging.getLogger("ilit").setLevel(logging.WARNING)

    train, (xc, yc), (xt, yt) = data()
    model = build_model(train, args.epochs)
    calib = [(xc[i:i + CAL_BATCH], yc[i:i + CAL_BATCH]) for i in range(0, len(xc), CAL_BATCH)]
    evals = [(xt[i:i + 50], yt[i:i + 50]) for i in range(0, len(xt), 50)]

    with tempfile.TemporaryDirectory(prefix="ilit-tf-bench-") as tmp:
        conf = {
            "framework": {"name": "tensorflow"},
            "calibration": {"iterations": [CAL_ITERATIONS]},
            "quantization": {"approach": "post_training_static_quant"},
            "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                       "objective": "performance", "timeout": 0, "max_trials": 40,
                       "workspace": {"path": os.path.join(tmp, "ws")}},
        }
        tuner = ilit.Tuner(conf)
        t0 = time.perf_counter()
        ilit_int8 = tuner.tune(model, calib, eval_dataloader=evals)
        tune_s = time.perf_counter() - t0
        if ilit_int8 is None:
            raise SystemExit("ilit found no INT8 model within 1% relative accuracy; see the log above")
        n_trials = len(tuner.history.trials)
        best_cfg = ilit.tune_cfg.describe(tuner.best_trial.tune_cfg)

        keras_path = os.path.join(tmp, "model.keras")
        model.save(keras_path)
        keras_size = os.path.getsize(keras_path)

    threads = default_threads()
    tflite_fp32 = TFLiteModel(run_converter(tf.lite.TFLiteConverter.from_keras_model(model)), num_threads=threads)
    hand_int8 = TFLiteModel(by_hand_int8(model, calib), num_threads=threads)
    ilit_int8.num_threads = threads
    keras_graph = tf.function(lambda v: model(v, training=False), reduce_retracing=True)
    keras_eager = lambda v: model(v, training=False)  # noqa: E731

    runners: Dict[str, Callable[[np.ndarray], Any]] = {
        "Keras FP32 (tf.function)": keras_graph,
        "Keras FP32 (eager call)": keras_eager,
        "TFLite FP32": tflite_fp32,
        "ilit INT8": ilit_int8,
        "by-hand converter INT8": hand_int8,
    }
    sizes = {"Keras FP32 (tf.function)": keras_size, "Keras FP32 (eager call)": keras_size,
             "TFLite FP32": tflite_fp32.size, "ilit INT8": ilit_int8.size, "by-hand converter INT8": hand_int8.size}
    acc = {name: accuracy(run, xt, yt) for name, run in runners.items()}
    lat: Dict[Tuple[str, int], List[float]] = {}
    for bs in (1, 16):
        xb = xt[:bs]
        for _round in range(args.rounds):
            for name, run in runners.items():
                runs = args.runs if "eager" not in name else max(20, args.runs // 5)
                lat.setdefault((name, bs), []).append(median_ms(lambda: run(xb), runs))
    med = {k: statistics.median(v) for k, v in lat.items()}

    print(f"\nTensorFlow {tf.__version__}, LiteRT interpreter with {threads} threads; digits test set "
          f"{len(yt)} images; ilit: {n_trials} trials in {tune_s:.1f}s, best: {best_cfg}")
    print(f"{'model':<26} {'b1 ms':>9} {'b16 ms':>9} {'accuracy':>9} {'size kB':>9}")
    for name in runners:
        print(f"{name:<26} {med[(name, 1)]:>9.4f} {med[(name, 16)]:>9.4f} {acc[name]:>9.4f} "
              f"{sizes[name] / 1e3:>9.1f}")
    base = "Keras FP32 (tf.function)"
    print("\nratios (latency: higher = INT8 faster)")
    checks = []
    for bs in (1, 16):
        vs_keras = med[(base, bs)] / med[("ilit INT8", bs)]
        vs_eager = med[("Keras FP32 (eager call)", bs)] / med[("ilit INT8", bs)]
        vs_tfl = med[("TFLite FP32", bs)] / med[("ilit INT8", bs)]
        vs_hand = med[("by-hand converter INT8", bs)] / med[("ilit INT8", bs)]
        print(f"  batch {bs:>2}: ilit INT8 vs Keras FP32 (tf.function) {vs_keras:.2f}x, vs Keras eager "
              f"{vs_eager:.2f}x, vs TFLite FP32 {vs_tfl:.2f}x, vs by-hand INT8 {vs_hand:.2f}x")
        checks.append((f"INT8 >= 2x faster than Keras FP32 at batch {bs}", vs_keras >= 2.0))
        # the same flatbuffer recipe: 'as fast' within timing noise (3%)
        checks.append((f"INT8 at least as fast as by-hand INT8 at batch {bs} (within 3% noise)", vs_hand >= 0.97))
    rel_loss = (acc[base] - acc["ilit INT8"]) / acc[base]
    print(f"  accuracy: Keras FP32 {acc[base]:.4f}, ilit INT8 {acc['ilit INT8']:.4f}, by-hand INT8 "
          f"{acc['by-hand converter INT8']:.4f}; ilit relative loss {100 * rel_loss:+.2f}%")
    print(f"  size: ilit INT8 is {sizes['ilit INT8'] / sizes['TFLite FP32']:.3f}x TFLite FP32, "
          f"{sizes['ilit INT8'] / keras_size:.3f}x the .keras file")
    checks.append(("relative accuracy loss <= 1%", rel_loss <= 0.01))
    print("\ngoals")
    for text, ok in checks:
        print(f"  [{'met' if ok else 'NOT MET'}] {text}")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nuptime: {load}")


if __name__ == "__main__":
    main()
