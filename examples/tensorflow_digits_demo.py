"""ilit TensorFlow demo: train a small Keras CNN on scikit-learn's digits, then tune it to INT8 (TFLite) with ilit.

Run it with ``nox -s tensorflow_demo`` (or ``python examples/tensorflow_digits_demo.py`` where ilit-core,
ilit-metrics, ilit-tensorflow, tensorflow-cpu and scikit-learn are installed). Nothing is downloaded. It prints
the FP32 and INT8 accuracy, latency and saved size, the number of trials, and writes a report of the run.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

import ilit  # noqa: E402
from ilit.objectives import saved_size  # noqa: E402

Batches = List[Tuple[np.ndarray, np.ndarray]]


def digits_batches(batch: int = 64, seed: int = 0) -> Tuple[Tuple[np.ndarray, np.ndarray], Batches, Batches]:
    """scikit-learn's 1,797 digits as (N, 8, 8, 1) float32 in [0, 1]: a stratified 75/25 split, the test part
    batched."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=seed,
                                              stratify=d.target)

    def batches(xs: np.ndarray, ys: np.ndarray) -> Batches:
        return [(xs[i:i + batch], ys[i:i + batch]) for i in range(0, len(ys), batch)]
    return (x_tr, y_tr), batches(x_tr, y_tr), batches(x_te, y_te)


def digits_cnn(train: Tuple[np.ndarray, np.ndarray], epochs: int, seed: int = 0) -> tf.keras.Model:
    """Three conv blocks and two dense layers (~0.2 M parameters), trained with Adam."""
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*train, epochs=epochs, batch_size=64, verbose=0)
    return model


def write_config(workspace: str) -> str:
    """The tuning config as a user writes it: static INT8, the topk metric, at most 1% relative loss."""
    conf = {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [10]},
        "quantization": {"approach": "post_training_static_quant"},
        "tuning": {"strategy": "basic", "metric": {"topk": 1}, "accuracy_criterion": {"relative": 0.01},
                   "objective": "performance", "timeout": 0, "max_trials": 50, "random_seed": 1978,
                   "workspace": {"path": workspace}},
    }
    os.makedirs(workspace, exist_ok=True)
    path = os.path.join(workspace, "tensorflow_digits_demo.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs for the FP32 model (default 8)")
    parser.add_argument("--workspace", default="./ilit_workspace/tensorflow_digits_demo",
                        help="where the YAML, history.json, best_model/ and report/ are written")
    args = parser.parse_args()

    t0 = time.perf_counter()
    train, train_data, test_data = digits_batches()
    model = digits_cnn(train, args.epochs)
    print(f"trained a Keras digits CNN ({model.count_params():,} parameters) on {len(train[1])} digits in "
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
    print(f"ilit INT8 tuning of a Keras CNN on scikit-learn digits ({n_test} test images, tensorflow {tf.__version__}; "
          "FP32 = Keras, INT8 = TFLite)")
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
    print("  (saved sizes are TFLite flatbuffers: the FP32 one is the float conversion of the Keras model)")

    from ilit.report import write_report

    print(f"report: {write_report(args.workspace)}")


if __name__ == "__main__":
    main()
