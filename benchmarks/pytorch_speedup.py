"""ilit-pytorch speed benchmark (not a test): FP32 vs ilit's tuned INT8 vs INT8 by hand with plain FX.

One run measures, with 2 threads:
- a ResNet-18-shaped net at 3x224x224 (random weights, batch-norm statistics set on random images),
  batch 1 and batch 16: median latency of FP32, of the model ilit tunes (accuracy proxy: cosine of the
  logits to FP32, at most 1% relative loss) and of the same net quantized by hand with
  ``prepare_fx(get_default_qconfig_mapping("x86"))`` / ``convert_fx``;
- the demo's DigitsCNN on scikit-learn digits: top-1 of FP32, ilit INT8 and by-hand INT8, and latency;
- tuning wall time of ``Tuner.tune`` on the digits model against the sum of the bare calls the same
  configs need without ilit (prepare/calibrate/convert with torch, an evaluation loop by hand).

These rows pin ilit to the FX backend (``ILIT_PYTORCH_BACKEND=fx``). ``--pt2e`` instead gives the PT2E rows:
ResNet-18 at batch 16 on 1 thread, FP32 eager and compiled, ilit on its default backend (PT2E), ilit FX and
PT2E by hand, interleaved, with the ISA and the load.

Run it alone (the machine is shared): ``flock /tmp/ilit-bench.lock python benchmarks/pytorch_speedup.py``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Tuple

from machine import isa  # benchmarks/machine.py (this script's own directory is on sys.path)

import torch
from torch import nn

import ilit
from ilit.objectives import saved_size

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from pytorch_digits_demo import trained_digits_cnn  # noqa: E402

warnings.filterwarnings("ignore")
THREADS = 2


# ----------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout, written out (torchvision does not import beside this torch)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, stride) in enumerate(chans, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_with_bn_stats(seed: int = 0) -> nn.Module:
    """Random weights; batch-norm running statistics from random images, so activations stay in range."""
    torch.manual_seed(seed)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


# ----------------------------------------------------------------------------- helpers
def interleaved_ms(models: Dict[str, nn.Module], x: torch.Tensor, rounds: int, warmup: int = 2) -> Dict[str, float]:
    """Median latency of each model; the models take turns in every round, so a change in the load of
    this shared machine hits them all alike instead of whichever happens to run then. The order rotates
    every round: the model run right after the FP32 one finds the caches full of FP32 weights.

    Each model is timed as a fresh copy: oneDNN int8 convs keep the kernel built for the first input
    shape they see, so a model already run at another batch size (as ilit's is, by tuning on the eval
    batches) runs ~15% slower at batch 1 afterwards; a copy (or a saved and loaded model) starts clean.
    """
    models = {k: copy.deepcopy(m) for k, m in models.items()}
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(warmup):
                m(x)
        names = list(models)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                models[k](x)
                times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def by_hand_fx(model: nn.Module, calib: List[Tuple[torch.Tensor, Any]], iterations: int) -> nn.Module:
    """What a user writes without ilit: the default x86 recipe, calibrate, convert."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[0][0],))
    with torch.no_grad():
        for x, _ in calib[:iterations]:
            prepared(x)
    return convert_fx(prepared)


def top1(model: nn.Module, data: List[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    with torch.inference_mode():
        for x, y in data:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def cosine_to(reference: torch.Tensor, inputs: torch.Tensor) -> Callable[[nn.Module], float]:
    def score(model: nn.Module) -> float:
        with torch.inference_mode():
            out = model(inputs)
        return float(nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0))
    return score


def tuner_config(workspace: str, timeout: float = 0, metric: bool = True) -> Dict[str, Any]:
    conf: Dict[str, Any] = {
        "framework": {"name": "pytorch"},
        "calibration": {"iterations": [10], "algorithm": {"activation": ["minmax", "kl"]}},
        "quantization": {"approach": "post_training_static_quant",
                         "weight": {"dtype": "int8", "scheme": ["sym"], "granularity": ["per_channel", "per_tensor"]},
                         "activation": {"dtype": "uint8", "scheme": ["asym"], "granularity": "per_tensor"}},
        "tuning": {"strategy": "basic", "accuracy_criterion": {"relative": 0.01}, "objective": "performance",
                   "timeout": timeout, "max_trials": 50, "workspace": {"path": workspace}},
    }
    if metric:
        conf["tuning"]["metric"] = {"topk": 1}
    return conf


def bare_quantize(model: nn.Module, tune_cfg: Dict[str, Any], calib: List[Tuple[torch.Tensor, Any]]) -> nn.Module:
    """The same config with torch calls only: the first op's qconfig as the global one, the ops whose
    choice differs (fallbacks) by name, calibrate, convert."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from ilit_pytorch.backend import make_qconfig

    ops = list(tune_cfg["ops"].items())
    first = next(op for _n, op in ops if op["activation"]["dtype"] != "fp32")
    mapping = QConfigMapping().set_global(make_qconfig(first, tune_cfg["approach"]))
    for name, op in ops:
        if {k: v for k, v in op.items() if k != "op_type"} != {k: v for k, v in first.items() if k != "op_type"}:
            mapping.set_module_name(name, make_qconfig(op, tune_cfg["approach"]))
    prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (calib[0][0],))
    with torch.no_grad():
        for x, _ in calib[:tune_cfg["calibration"]["iterations"]]:
            prepared(x)
    return convert_fx(prepared)


def tuning_overhead(model: nn.Module, calib: List[Tuple[torch.Tensor, Any]],
                    tune_kwargs: Callable[[str], Dict[str, Any]],
                    evaluate: Callable[[nn.Module], float], config: Callable[[str], Dict[str, Any]], workspace: str,
                    repeats: int) -> Tuple[Dict[str, float], Any, nn.Module]:
    """Tuner.tune wall time against the bare calls for the configs it tried; the better of ``repeats`` runs.

    The time spent timing models (the performance objective, baseline included) and saving each new
    best model is measured by wrapping ``Performance.measure`` and the adaptor's ``save``.
    """
    from ilit.objectives.performance import Performance
    from ilit_pytorch.adaptor import PyTorchAdaptor

    saves: List[float] = []
    measures: List[float] = []
    real_save, real_measure = PyTorchAdaptor.save, Performance.measure

    def timed_save(self: Any, m: Any, path: str) -> None:
        t0 = time.perf_counter()
        real_save(self, m, path)
        saves.append(time.perf_counter() - t0)

    def timed_measure(self: Any, m: Any, adaptor: Any, inputs: Any) -> float:
        t0 = time.perf_counter()
        value = real_measure(self, m, adaptor, inputs)
        measures.append(time.perf_counter() - t0)
        return value

    best: Dict[str, float] = {}
    for rep in range(repeats):
        saves.clear()
        measures.clear()
        PyTorchAdaptor.save = timed_save  # type: ignore[method-assign]
        Performance.measure = timed_measure  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            tuner = ilit.Tuner(config(f"{workspace}{rep}"))
            int8 = tuner.tune(model, q_dataloader=calib, **tune_kwargs(workspace))
            tune_s = time.perf_counter() - t0
        finally:
            PyTorchAdaptor.save = real_save  # type: ignore[method-assign]
            Performance.measure = real_measure  # type: ignore[method-assign]
        assert int8 is not None, "ilit found no INT8 model meeting the goal"
        t0 = time.perf_counter()
        evaluate(model)
        for trial in tuner.history.trials:
            evaluate(bare_quantize(model, trial.tune_cfg, calib))
        bare_s = time.perf_counter() - t0
        objective_s = sum(measures)
        run = {"trials": len(tuner.history.trials), "tune": tune_s, "bare": bare_s, "objective": objective_s,
               "saves": sum(saves), "overhead": tune_s / bare_s - 1,
               "overhead_core": (tune_s - objective_s - sum(saves)) / bare_s - 1}
        if not best or run["tune"] - run["bare"] < best["tune"] - best["bare"]:
            best, kept = run, (tuner, int8)
    return best, kept[0], kept[1]


# ----------------------------------------------------------------------------- PT2E rows


def pt2e_rows(runs: int, threads: int) -> None:
    """ResNet-18 at batch 16: FP32 eager and compiled, ilit static on its default backend (PT2E), ilit pinned to
    FX, and PT2E by hand (torchao X86InductorQuantizer global config, torch.compile with freezing), timed
    interleaved on ``threads`` threads; ratios to FP32 compiled and to PT2E by hand."""
    import shutil

    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    from ilit_pytorch import backend

    torch.set_num_threads(threads)
    inductor_config.freezing = True  # for the by-hand and FP32 compiles (ilit's PT2E model sets it per compile)
    net = resnet18_with_bn_stats()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=g), None) for _ in range(4)]
    x = torch.randn(16, 3, 224, 224, generator=g)
    tmp = tempfile.mkdtemp(prefix="ilit-bench-pt2e-")
    conf = tuner_config(os.path.join(tmp, "default"), metric=False)
    conf["calibration"]["iterations"] = [4]
    conf["tuning"]["max_trials"] = 1
    always = {"eval_func": lambda m: 1.0}  # speed only: the first config
    t0 = time.perf_counter()
    models: Dict[str, Any] = {"fp32 eager": net, "fp32 compiled": torch.compile(copy.deepcopy(net))}
    notes = []
    try:
        os.environ.pop(backend.PT2E_ENV, None)  # the default backend
        tuner = ilit.Tuner(conf)
        models["ilit default"] = tuner.tune(net, q_dataloader=calib, **always)
        best = tuner.best_trial
        notes.append(f"ilit default backend: {type(models['ilit default']).__name__}; its performance objective "
                     f"measured {1 / best.ratio:.2f}x the FP32 model (eager) on 1 thread" if best and best.ratio
                     else "ilit default: no ratio recorded")
        os.environ[backend.PT2E_ENV] = "fx"
        conf["tuning"]["workspace"]["path"] = os.path.join(tmp, "fx")
        models["ilit fx"] = ilit.Tuner(conf).tune(net, q_dataloader=calib, **always)
    finally:
        os.environ.pop(backend.PT2E_ENV, None)
        shutil.rmtree(tmp, ignore_errors=True)
    # strict=True: with strict=False, X86InductorQuantizer fails on the blocks' shared nn.ReLU ("Input partition
    # has more than one output node"); ilit tries strict=False, then strict=True, as here
    # strict export fixes the batch size: export and calibrate at batch 16 (the same 32 images as ilit's 4 x 8)
    exported = torch.export.export(copy.deepcopy(net), (x,), strict=True).module()
    prepared = prepare_pt2e(exported, X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()))
    with torch.no_grad():
        for i in range(0, len(calib), 2):
            prepared(torch.cat([calib[i][0], calib[i + 1][0]]))
    models["pt2e by hand"] = torch.compile(convert_pt2e(prepared))
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up (compiles)
            m(x)
            m(x)
        print(f"set-up (tuning, export, compiles, warm-up): {time.perf_counter() - t0:.0f} s")
        names = list(models)
        clock = time.process_time if threads == 1 else time.perf_counter  # 1 thread: CPU time, robust to load
        for r in range(runs):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t1 = clock()
                models[k](x)
                times[k].append(clock() - t1)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()
    print(f"\nPT2E rows: ResNet-18 3x224x224 batch 16, {threads} thread(s), {runs} interleaved rounds, ISA {isa()}, "
          f"torch {torch.__version__}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  {'variant':<14}{'median':>10}  {'spread':>6}  {'vs fp32 compiled':>16}  {'vs pt2e by hand':>15}")
    for k, v in med.items():
        spread = (max(times[k]) - min(times[k])) * 1000 / v
        print(f"  {k:<14}{v:>7.1f} ms  {spread:>6.2f}  {med['fp32 compiled'] / v:>15.2f}x  "
              f"{med['pt2e by hand'] / v:>14.2f}x")
    for note in notes:
        print(f"  {note}")
    print("  goals: ilit >= 1.0x pt2e by hand, >= 2.5x fp32 compiled")


# ----------------------------------------------------------------------------- the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-b1", type=int, default=42)
    parser.add_argument("--runs-b16", type=int, default=9)
    parser.add_argument("--pt2e", action="store_true", help="only the PT2E rows (ResNet-18, batch 16, compiled)")
    parser.add_argument("--threads", type=int, default=1, help="threads for the PT2E rows (default 1)")
    args = parser.parse_args()
    if args.pt2e:
        pt2e_rows(args.runs_b16, args.threads)
        return
    os.environ["ILIT_PYTORCH_BACKEND"] = "fx"  # these rows compare like with like: ilit FX against FX by hand
    torch.set_num_threads(THREADS)
    logging.getLogger("ilit").setLevel(logging.WARNING)
    logging.getLogger("ilit").addHandler(logging.NullHandler())
    tmp = tempfile.mkdtemp(prefix="ilit-bench-")
    rows = []

    # --- ResNet-18 at 224x224
    net = resnet18_with_bn_stats()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(8, 3, 224, 224, generator=g), None) for _ in range(10)]
    evalx = torch.randn(16, 3, 224, 224, generator=g)
    with torch.inference_mode():
        ref = net(evalx)
    r_cosine = cosine_to(ref, evalx)
    r_ovh, tuner, r_int8 = tuning_overhead(
        net, calib, lambda ws: {"eval_func": r_cosine}, lambda m: r_cosine(m),
        lambda ws: tuner_config(ws, metric=False), os.path.join(tmp, "resnet"), repeats=2)
    r_hand = by_hand_fx(net, calib, 10)
    r_cos = {"ilit": r_cosine(r_int8), "hand": r_cosine(r_hand)}
    for batch, runs in ((1, args.runs_b1), (16, args.runs_b16)):
        x = torch.randn(batch, 3, 224, 224, generator=g)
        timed = interleaved_ms({"fp32": net, "ilit": r_int8, "hand": r_hand}, x, runs)
        rows.append(("ResNet-18 3x224x224", batch, timed))
    r_size = (saved_size(net, tuner.adaptor), saved_size(r_int8, tuner.adaptor))

    # --- the demo's digits CNN: accuracy, latency, and tuning overhead over every model-wise config
    model, train_data, test_data = trained_digits_cnn()
    d_ovh, dt, d_int8 = tuning_overhead(
        model, train_data, lambda ws: {"eval_dataloader": test_data}, lambda m: top1(m, test_data),
        lambda ws: tuner_config(ws, timeout=600), os.path.join(tmp, "digits"), repeats=2)
    d_hand = by_hand_fx(model, train_data, 10)
    acc = {"fp32": top1(model, test_data), "ilit": top1(d_int8, test_data), "hand": top1(d_hand, test_data)}
    xb = test_data[0][0]
    rows.append(("DigitsCNN 1x8x8", len(xb), interleaved_ms({"fp32": model, "ilit": d_int8, "hand": d_hand}, xb, 150)))

    # --- the table
    load = os.getloadavg()
    print()
    print(f"ilit-pytorch speedup benchmark: torch {torch.__version__}, {THREADS} threads, "
          f"{platform.processor() or platform.machine()}, "
          f"engine {torch.backends.quantized.engine}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    head = (f"{'model':22}{'batch':>6}{'FP32 ms':>10}{'ilit INT8 ms':>14}{'by-hand ms':>12}{'FP32/ilit':>11}"
            f"{'by-hand/ilit':>14}")
    print(head)
    print("-" * len(head))
    for name, batch, l in rows:
        print(f"{name:22}{batch:>6}{l['fp32']:>10.2f}{l['ilit']:>14.2f}{l['hand']:>12.2f}"
              f"{l['fp32'] / l['ilit']:>10.2f}x{l['hand'] / l['ilit']:>13.2f}x")
    print()
    rel = (acc["fp32"] - acc["ilit"]) / acc["fp32"]
    print(f"digits top-1 ({sum(len(y) for _, y in test_data)} test images): FP32 {acc['fp32']:.4f}, "
          f"ilit INT8 {acc['ilit']:.4f} "
          f"(relative loss {100 * rel:+.2f}%), by-hand INT8 {acc['hand']:.4f}")
    print(f"ResNet-18 logits cosine to FP32 (16 images): ilit INT8 {r_cos['ilit']:.4f}, "
          f"by-hand INT8 {r_cos['hand']:.4f}; "
          f"saved size {r_size[0] / 1e6:.1f} MB -> {r_size[1] / 1e6:.1f} MB ({r_size[1] / r_size[0]:.3f}x)")
    print("tuning wall time vs the bare calls (torch prepare/calibrate/convert + an evaluation loop) for the same "
          "configs,")
    print("plus the FP32 evaluation; ilit also times every passing model (performance objective) and saves each new "
          "best:")
    print(f"{'':22}{'trials':>7}{'Tuner.tune s':>14}{'bare s':>8}{'overhead':>10}{'objective s':>13}{'saves s':>9}"
          f"{'overhead w/o objective+saves':>30}")
    for name, o in (("ResNet-18 (best of 2)", r_ovh), ("DigitsCNN (best of 2)", d_ovh)):
        print(f"{name:22}{o['trials']:>7}{o['tune']:>14.2f}{o['bare']:>8.2f}{100 * o['overhead']:>9.1f}%"
              f"{o['objective']:>13.2f}"
              f"{o['saves']:>9.2f}{100 * o['overhead_core']:>29.1f}%")
    b1 = next(l for n, b, l in rows if b == 1)
    b16 = next(l for n, b, l in rows if b == 16)
    checks = [
        ("INT8 >= 2.5x FP32 (ResNet-18, batch 1 and 16)",
         min(b1["fp32"] / b1["ilit"], b16["fp32"] / b16["ilit"]) >= 2.5),
        ("ilit INT8 at least as fast as by hand (ResNet-18, within 5% timing noise)",
         max(b1["ilit"] / b1["hand"], b16["ilit"] / b16["hand"]) <= 1.05),
        ("relative accuracy loss <= 1% (digits)", rel <= 0.01),
        ("tuning overhead <= 10% (all of Tuner.tune, ResNet-18 and digits)",
         max(r_ovh["overhead"], d_ovh["overhead"]) <= 0.10),
        ("tuning overhead <= 10% besides timing and saving models (ResNet-18 and digits)",
         max(r_ovh["overhead_core"], d_ovh["overhead_core"]) <= 0.10),
    ]
    for text, ok in checks:
        print(f"  [{'x' if ok else ' '}] {text}")


if __name__ == "__main__":
    main()
