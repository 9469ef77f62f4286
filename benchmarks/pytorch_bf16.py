"""bf16 against fp32 for a fallen-back op (not a test): what ilit-pytorch's bf16 fallback buys on this CPU.

A fallback op runs either as the float module (fp32 fallback) or as ``ilit_pytorch.bf16.BF16Module`` (the
module in bfloat16, its input cast to bf16 and its output back to fp32, casts included in the time). For
each shape the variants run interleaved (fp32, bf16, int8 dynamic, fp32, bf16, ...) on 1 thread; the table
gives the median time per variant and the ratio to fp32. The int8 column (``quantize_dynamic``) is the op
kept INT8, for scale. Prints the ISA (amx / avx512_bf16 / avx512_vnni / avx2, from /proc/cpuinfo) and the
load average: on a CPU without AMX/AVX512-BF16 torch emulates bf16 and it is expected to be slower than fp32,
which is why ilit offers bf16 only where the ISA has it.

Run: ``python benchmarks/pytorch_bf16.py [--rounds 15] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from ilit_pytorch import bf16

warnings.filterwarnings("ignore")


def isa() -> str:
    """The best matrix ISA of this CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = bf16.cpu_flags(f.read())
    except OSError:
        return "unknown"
    for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512_vnni", "avx512_vnni"),
                       ("avx2", "avx2")):
        if flag in flags:
            return name
    return "other"


def shapes() -> List[Tuple[str, nn.Module, torch.Tensor]]:
    """Ops a transformer or CNN falls back, with inputs of a realistic batch."""
    torch.manual_seed(0)
    return [
        ("Linear 384->1536, 2048 tokens", nn.Linear(384, 1536), torch.randn(2048, 384)),
        ("Linear 1536->384, 2048 tokens", nn.Linear(1536, 384), torch.randn(2048, 1536)),
        ("Linear 384->384, 512 tokens", nn.Linear(384, 384), torch.randn(512, 384)),
        ("Conv2d 64->64 3x3, 8x64x56x56", nn.Conv2d(64, 64, 3, padding=1), torch.randn(8, 64, 56, 56)),
    ]


def timed(fn: Callable[[], torch.Tensor], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="calls per variant per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"ISA {isa()}, native bf16 {bf16.cpu_has_bf16()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds x {args.repeat} calls, "
          f"load at start {tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"{'op':34} {'fp32 ms':>9} {'bf16 ms':>9} {'int8 ms':>9} {'fp32/bf16':>10} {'fp32/int8':>10} "
          f"{'bf16 max rel err':>17}")
    for label, module, x in shapes():
        module.eval()
        variants: Dict[str, Callable[[], torch.Tensor]] = {}
        half = bf16.BF16Module(_copy(module))
        variants["fp32"] = lambda m=module, x=x: m(x)
        variants["bf16"] = lambda m=half, x=x: m(x)
        if isinstance(module, nn.Linear):
            q = torch.ao.quantization.quantize_dynamic(nn.Sequential(_copy(module)), {nn.Linear}, dtype=torch.qint8)
            variants["int8"] = lambda m=q, x=x: m(x)
        times: Dict[str, List[float]] = {k: [] for k in variants}
        with torch.inference_mode():
            ref, got = module(x), half(x)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            for fn in variants.values():  # warm-up: oneDNN builds its kernels on the first calls
                fn()
                fn()
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    times[name].append(timed(fn, args.repeat))
        med = {k: statistics.median(v) for k, v in times.items()}
        int8 = f"{med['int8']:9.2f}" if "int8" in med else f"{'-':>9}"
        int8_ratio = f"{med['fp32'] / med['int8']:9.2f}x" if "int8" in med else f"{'-':>10}"
        print(f"{label:34} {med['fp32']:9.2f} {med['bf16']:9.2f} {int8} {med['fp32'] / med['bf16']:9.2f}x "
              f"{int8_ratio} {err:17.4f}")
    print(f"load at end {tuple(round(v, 2) for v in os.getloadavg())}")


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


if __name__ == "__main__":
    main()
