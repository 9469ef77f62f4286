"""ilit detection demo, TensorFlow: the digits detector in Keras, tuned to a full-integer TFLite model with ilit.

The same detector as ``pytorch_detection_demo.py`` (same canvases, same CenterNet-shaped network with three
raw outputs: heat-map logits, box sizes, centre offsets), written in Keras (NHWC) and trained here.
ilit-tensorflow converts it to TFLite INT8 (inputs and outputs stay float32); decoding and NMS run outside,
in numpy. Both usages: (b) ``eval_func`` and (a) ``eval_dataloader`` + ``cocomap`` + ``postprocess``.

Run it with ``nox -s tensorflow_detection``, or where ilit-core, ``ilit-metrics[coco]``, ilit-tensorflow,
tensorflow-cpu, ai-edge-litert and scikit-learn are installed: ``python examples/tensorflow_detection_demo.py``.
Latencies are timed on 1 thread, interleaved, against Keras and against the float TFLite conversion.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

import ilit  # noqa: E402

from digit_canvases import CANVAS, NUM_CLASSES, Target, decode, detection_arrays, encode, isa  # noqa: E402

keras = tf.keras
Batch = Tuple[np.ndarray, List[Target]]
HEADS = ("heatmap", "size", "offset")


def torch_init() -> Any:
    """PyTorch's default conv initialisation (kaiming_uniform, a=sqrt(5): uniform in +-1/sqrt(fan_in)); a new
    instance per layer, as one Keras initializer instance gives every layer the same values."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")


def detector(width: int = 16) -> Any:
    """The Keras twin of ``DigitDetector``: stride-4 backbone, a neck, three 1x1-conv heads (NHWC outputs)."""
    layers = keras.layers

    def block(x: Any, filters: int, stride: int) -> Any:
        if stride == 2:  # PyTorch's symmetric padding 1 (Keras' 'same' would pad 0 before, 1 after)
            x = layers.ZeroPadding2D(1)(x)
        x = layers.Conv2D(filters, 3, stride, "valid" if stride == 2 else "same", use_bias=False,
                          kernel_initializer=torch_init())(x)
        return layers.ReLU()(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))  # PyTorch's defaults

    inp = keras.Input((CANVAS, CANVAS, 1), name="image")
    x = block(inp, width, 2)
    x = block(x, 2 * width, 2)
    x = block(x, 2 * width, 1)
    f = block(x, 2 * width, 1)
    heat = layers.Conv2D(NUM_CLASSES, 1, kernel_initializer=torch_init(),
                         bias_initializer=keras.initializers.Constant(-2.19), name="heatmap")(f)
    size = layers.Conv2D(2, 1, kernel_initializer=torch_init(), name="size")(f)
    offset = layers.Conv2D(2, 1, kernel_initializer=torch_init(), name="offset")(f)
    return keras.Model(inp, [heat, size, offset], name="digit_detector")


def to_nchw(outputs: Any) -> List[np.ndarray]:
    """The three NHWC head outputs, from a list (Keras, TFLite) or a dict keyed by head name, as NCHW numpy."""
    if isinstance(outputs, dict):
        outputs = [outputs[k] for k in HEADS]
    return [np.transpose(np.asarray(o), (0, 3, 1, 2)) for o in outputs]


def postprocess(outputs: Any) -> List[Dict[str, np.ndarray]]:
    """Usage (a)'s hook: one batch's raw outputs (numpy, NHWC) -> cocomap's per-image box dicts."""
    return decode(to_nchw(outputs))


def detection_data(n_train: int = 2000, n_test: int = 300, batch: int = 32) -> Tuple[List[Batch], List[Batch]]:
    x_tr, t_tr, x_te, t_te = detection_arrays(n_train, n_test)

    def batches(x: np.ndarray, t: List[Target]) -> List[Batch]:
        x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
        return [(x[i:i + batch], t[i:i + batch]) for i in range(0, len(t), batch)]
    return batches(x_tr, t_tr), batches(x_te, t_te)


def train(model: Any, data: List[Batch], epochs: int, seed: int = 0) -> Any:
    """CenterNet losses (penalty-reduced focal on the heat-map, masked L1 on sizes and offsets), Adam."""
    tf.random.set_seed(seed)
    encoded = [tuple(tf.constant(np.transpose(a, (0, 2, 3, 1))) for a in encode(t)) for _, t in data]
    steps = epochs * len(data)
    warmup = int(0.3 * steps)  # like PyTorch's OneCycleLR: warm up to the peak, then cosine down
    opt = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(4e-3 / 25, steps - warmup, warmup_target=4e-3,
                                                                      warmup_steps=warmup), epsilon=1e-8)

    @tf.function
    def step(x: Any, heat: Any, size: Any, offset: Any, mask: Any) -> Any:
        with tf.GradientTape() as tape:
            out_heat, out_size, out_offset = model(x, training=True)
            p = tf.clip_by_value(tf.sigmoid(out_heat), 1e-4, 1 - 1e-4)
            pos = tf.cast(tf.equal(heat, 1.0), tf.float32)
            n_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
            focal = -(tf.reduce_sum(tf.math.log(p) * (1 - p) ** 2 * pos)
                      + tf.reduce_sum(tf.math.log(1 - p) * p ** 2 * (1 - heat) ** 4 * (1 - pos))) / n_pos
            n = tf.maximum(tf.reduce_sum(mask), 1.0)
            loss = (focal + 0.1 * tf.reduce_sum(tf.abs(out_size * mask - size)) / n
                    + tf.reduce_sum(tf.abs(out_offset * mask - offset)) / n)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(len(data)):
            step(tf.constant(data[i][0]), *encoded[i])
    return model


def coco_map(model: Any, data: List[Batch]) -> Dict[str, float]:
    """Every COCO number of a Keras or TFLite model on ``data``: run, decode, score with cocomap."""
    from ilit_metrics import CocoMAP

    metric = CocoMAP()
    for images, targets in data:
        out = model(images, training=False) if isinstance(model, keras.Model) else model(images)
        metric.update(postprocess([np.asarray(o) for o in out]), targets)
    return metric.results()


def write_config(workspace: str, usage: str) -> str:
    conf: Dict[str, Any] = {
        "framework": {"name": "tensorflow"},
        "calibration": {"iterations": [10]},
        "quantization": {"approach": "post_training_static_quant"},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.01}, "objective": "performance",
                   "timeout": 0, "max_trials": 30, "random_seed": 1978, "workspace": {"path": workspace}},
    }
    if usage == "a":
        conf["tuning"]["metric"] = {"cocomap": None}
    os.makedirs(workspace, exist_ok=True)
    path = os.path.join(workspace, f"detection_{usage}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return path


def interleaved_latency(runs: Sequence[Any], rounds: int = 20, reps: int = 3) -> Tuple[List[float], List[float]]:
    """Median ms per call of each zero-argument function, interleaved; median per-round speed-up over the first."""
    times: List[List[float]] = [[] for _ in runs]
    for run in runs:
        for _ in range(3):
            run()
    for _ in range(rounds):
        for i, run in enumerate(runs):
            t = time.perf_counter()
            for _ in range(reps):
                run()
            times[i].append((time.perf_counter() - t) / reps * 1e3)
    base = np.asarray(times[0])
    return [float(np.median(t)) for t in times], [float(np.median(base / np.asarray(t))) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workspace", default="./ilit_workspace/tensorflow_detection_demo")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    t0 = time.perf_counter()
    train_data, test_data = detection_data()
    keras.utils.set_random_seed(0)
    model = train(detector(), train_data, args.epochs)
    print(f"trained the Keras detector ({model.count_params():,} parameters) in {time.perf_counter() - t0:.1f}s")

    tuner_b = ilit.Tuner(write_config(os.path.join(args.workspace, "eval_func"), "b"))
    int8_b = tuner_b.tune(model, q_dataloader=train_data, eval_func=lambda m: coco_map(m, test_data)["map"])
    tuner_a = ilit.Tuner(write_config(os.path.join(args.workspace, "eval_dataloader"), "a"))
    int8_a = tuner_a.tune(model, q_dataloader=train_data, eval_dataloader=test_data, postprocess=postprocess)
    for usage, tuner, q in (("(b) eval_func", tuner_b, int8_b), ("(a) eval_dataloader", tuner_a, int8_a)):
        if q is None or tuner.best_trial is None:
            raise SystemExit(f"usage {usage}: no INT8 config met the accuracy goal; see {tuner.history_path}")

    from ilit_tensorflow import TFLiteModel

    # timed on 1 thread: the float TFLite conversion (the fair FP32 baseline) and the INT8 model
    fp32_tflite = TFLiteModel(tf.lite.TFLiteConverter.from_keras_model(model).convert(), num_threads=1)
    int8_1t = TFLiteModel(int8_b.content, num_threads=1)
    fp32, q_b, q_a = coco_map(model, test_data), coco_map(int8_b, test_data), coco_map(int8_a, test_data)
    x1, x32 = test_data[0][0][:1], test_data[0][0]
    serve = tf.function(lambda x: model(x, training=False))
    lat = {}
    for name, x in (("batch 1", x1), ("batch 32", x32)):
        lat[name] = interleaved_latency([lambda x=x: serve(x), lambda x=x: fp32_tflite(x), lambda x=x: int8_1t(x)])

    print()
    print(f"ilit INT8 tuning of the Keras digits detector (TF {tf.__version__}, ISA {isa()}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'':24}{'Keras FP32':>12}{'INT8 (b)':>10}{'INT8 (a)':>10}{'ratio (b)':>10}")
    for key, label in (("map", "COCO mAP@[.5:.95]"), ("map_50", "mAP@.5"), ("map_75", "mAP@.75")):
        print(f"  {label:24}{fp32[key]:>12.4f}{q_b[key]:>10.4f}{q_a[key]:>10.4f}{q_b[key] / fp32[key]:>10.4f}")
    print(f"  {'latency (ms)':24}{'Keras FP32':>12}{'TFLite FP32':>12}{'INT8':>10}{'vs Keras':>10}{'vs TFLite':>10}")
    for name, (ms, ratio) in lat.items():
        print(f"  {name:24}{ms[0]:>12.3f}{ms[1]:>12.3f}{ms[2]:>10.3f}{ratio[2]:>9.2f}x"
              f"{ratio[2] / ratio[1]:>9.2f}x")
    for usage, tuner in (("(b) eval_func", tuner_b), ("(a) eval_dataloader + cocomap", tuner_a)):
        best = tuner.best_trial
        fallback = ilit.fallback_ops(best.tune_cfg)
        print(f"  {usage}: {len(tuner.history.trials)} trial(s), best {best.trial}, "
              f"{len(best.tune_cfg['ops']) - len(fallback)}/{len(best.tune_cfg['ops'])} ops INT8, FP32 fallback: "
              f"{', '.join(fallback) or 'none'}; goal {'met' if best.meets else 'NOT met'}")
    print(f"  all in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
