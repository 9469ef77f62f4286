"""``footprint``: the model's weight bytes plus peak native memory while running inference.

Python's tracemalloc cannot see what frameworks allocate natively, so on Linux the peak resident
set is read from the kernel: ``/proc/self/clear_refs`` resets the high-water mark (VmHWM), the
model runs, and the rise of VmHWM over the resident set before running is the working memory.
Where that is not available a sampling thread reads the resident set instead; off Linux it falls
back to tracemalloc (Python heap only), and says so once in the log.
"""

from __future__ import annotations

import logging
import os
import threading
import tracemalloc
from typing import Any, Callable, Optional

from ..objective import Objective
from .modelsize import saved_size

__all__ = ["Footprint", "peak_memory"]

log = logging.getLogger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], runs: int = 3) -> int:
    """Peak bytes of memory ``fn()`` uses above what was resident before, native allocations included."""
    base = _rss()
    if base is not None and _reset_hwm():
        base = _rss() or base
        for _ in range(runs):
            fn()
        hwm = _hwm()
        if hwm is not None:
            return max(0, hwm - base)
    if base is not None:  # sample the resident set from a thread
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss() or 0)
                stop.wait(0.0005)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            for _ in range(runs):
                fn()
        finally:
            stop.set()
            t.join()
        return max(0, peak[0] - base)
    log.warning("footprint: no /proc on this system; measuring the Python heap only (tracemalloc)")
    tracemalloc.start()
    try:
        for _ in range(runs):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class Footprint(Objective):
    """Smaller is better: saved weight bytes plus peak working memory of inference on one batch."""

    unit = "bytes"

    def measure(self, model: Any, adaptor: Any, inputs: Any) -> float:
        adaptor.infer(model, inputs)  # warm-up: lazy allocations and caches are not "peak"
        return float(saved_size(model, adaptor) + peak_memory(lambda: adaptor.infer(model, inputs)))

    def format(self, value: float) -> str:
        return f"{value / 1e6:.3f} MB"
