"""How far the ``performance`` objective's INT8/FP32 latency ratio moves when another process loads the CPUs.

Not a test. It quantizes the demo's DigitsCNN (batch 64, 1x8x8) with the PyTorch adaptor, then runs the
objective's own measurement, ``Performance().compare(int8, fp32, adaptor, batch)`` (interleaved rounds on 1
thread, the median of the per-round ratios), ``--runs`` times with nothing of ours running beside it
("quiet"), then ``--runs`` times while ``--load-procs`` processes spin on every CPU ("loaded"). For contrast it
also gives, in each phase, the ratio the old way (``Objective.compare``'s default: each model timed on its own,
one after the other, then divided).

Goals (issue 12): the quiet ratio stable to +-5% over 5 runs; the loaded ratio within +-15% of the quiet one.
It prints the ISA (avx2 / avx512_vnni / amx from /proc/cpuinfo) and the load average before and after each
phase: on a shared machine "quiet" only means that this script adds no load.

    python benchmarks/performance_under_load.py [--runs 5] [--load-procs 2] [--model digits|resnet]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from typing import Any, Callable, List, Tuple

from machine import isa  # benchmarks/machine.py (this script's own directory is on sys.path)

import torch

import ilit
from ilit import Comparison, Objective
from ilit.objectives import Performance
from ilit.space import TuningSpace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from pytorch_digits_demo import DigitsCNN  # noqa: E402

warnings.filterwarnings("ignore")




def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def spin(stop: Any) -> None:
    """Load one CPU: matrix products (compute and memory traffic), one thread, until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        for _ in range(20):
            a = torch.tanh(a @ a)


def int8_and_fp32(model_name: str) -> Tuple[Any, Any, Any, torch.Tensor]:
    """(adaptor, INT8 model, FP32 model, batch): the first model-wise config of the space, calibrated on 4 batches."""
    torch.manual_seed(0)
    if model_name == "resnet":
        from pytorch_speedup import resnet18_with_bn_stats  # noqa: PLC0415

        fp32 = resnet18_with_bn_stats().eval()
        data = [(torch.randn(1, 3, 224, 224), torch.zeros(1, dtype=torch.long)) for _ in range(4)]
    else:
        fp32 = DigitsCNN().eval()
        data = [(torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)) for _ in range(4)]
    from ilit_pytorch import PyTorchAdaptor  # noqa: PLC0415

    config = ilit.load_config({"framework": {"name": "pytorch"}, "calibration": {"iterations": 4}})
    adaptor = PyTorchAdaptor(config)
    space = TuningSpace.build(adaptor.query_fw_capability(fp32), config)
    return adaptor, adaptor.quantize(space.model_wise_configs()[0], fp32, data), fp32, data[0][0]


def phase(name: str, runs: int, compare: Callable[[], Comparison], separate: Callable[[], Comparison]) -> List[float]:
    print(f"\n{name}: load average before {load_avg()}")
    ratios = []
    for i in range(runs):
        c = compare()
        s = separate()
        ratios.append(c.ratio)
        print(f"  run {i + 1}: interleaved ratio {c.ratio:.4f} +- {100 * c.spread:4.1f}% ({c.rounds:3d} rounds, "
              f"{c.threads} thread, {'reliable' if c.reliable else 'UNRELIABLE'}; INT8 {c.value:.3f} ms, "
              f"FP32 {c.baseline:.3f} ms) | measured separately: {s.ratio:.4f} (INT8 {s.value:.3f} ms, "
              f"FP32 {s.baseline:.3f} ms)")
    print(f"  load average after {load_avg()}")
    return ratios


def spread_pct(values: List[float], around: float) -> float:
    return 100 * max(abs(v - around) for v in values) / around


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model", choices=["digits", "resnet"], default="digits")
    args = parser.parse_args()

    adaptor, q, fp32, x = int8_and_fp32(args.model)
    perf = Performance()  # what tuning uses: $ILIT_TIMING_THREADS or 1 thread
    print(f"performance objective under load: torch {torch.__version__}, ISA {isa()}, {os.cpu_count()} CPUs, "
          f"model {args.model} batch {len(x)}, timing threads {perf.threads}, engine {torch.backends.quantized.engine}")

    def compare() -> Comparison:
        with adaptor.fp32_context(fp32):
            return perf.compare(q, fp32, adaptor, x)

    def separate() -> Comparison:
        with adaptor.fp32_context(fp32):
            return Objective.compare(perf, q, fp32, adaptor, x)

    quiet = phase("quiet (no load added)", args.runs, compare, separate)
    stop = mp.Event()
    procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.load_procs)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let the load settle
    try:
        loaded = phase(f"loaded ({args.load_procs} processes spinning on matrix products)", args.runs, compare,
                       separate)
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()

    q_med, l_med = statistics.median(quiet), statistics.median(loaded)
    print()
    print(f"quiet:  median ratio {q_med:.4f} (speedup {1 / q_med:.2f}x); runs within +-{spread_pct(quiet, q_med):.1f}% "
          f"of it (goal +-5%)")
    print(f"loaded: median ratio {l_med:.4f} (speedup {1 / l_med:.2f}x); {100 * (l_med / q_med - 1):+.1f}% from quiet, "
          f"every run within +-{spread_pct(loaded, q_med):.1f}% of quiet (goal +-15%)")


if __name__ == "__main__":
    main()
