"""Layer statistics for calibration, collected once and turned into thresholds per algorithm.

The collector has the interface of MXNet's layer-output collectors (``collect(name, arr)``, fed by the
executor monitor) but gathers min/max and, for ``kl``, MXNet's histograms in one pass over every
activation tensor, so a later trial that only changes fallback or scheme reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq

from ._deps import require_scipy

__all__ = ["LayerStats", "StatsCollector", "thresholds"]

Hist = Tuple[np.ndarray, np.ndarray, float, float, float]  # MXNet's (hist, edges, min, max, th)


@dataclass
class LayerStats:
    """What one calibration run learned: each tensor's min/max, and its histogram when collected."""

    min_max: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    hist: Dict[str, Hist] = field(default_factory=dict)
    batches: int = 0
    with_histograms: bool = False
    _kl_cache: Dict[Tuple[str, str], Tuple[float, float]] = field(default_factory=dict, repr=False)


class StatsCollector:
    """Min/max (MXNet's ``naive``) and histograms (its ``entropy``) of the tensors in ``include``."""

    def __init__(self, include: Iterable[str], histograms: bool, num_bins: int = 8001) -> None:
        self.include = set(include)
        self.stats = LayerStats(with_histograms=histograms)
        self.num_bins = num_bins

    def collect(self, name: str, arr: mx.nd.NDArray) -> None:
        """Monitor callback: fold one tensor of one batch into the statistics."""
        if name not in self.include:
            return
        if self.stats.with_histograms:
            data = arr.asnumpy()
            lo, hi = float(data.min()), float(data.max())
            th = max(abs(lo), abs(hi))
            if name in self.stats.hist:
                self.stats.hist[name] = mxq.combine_histogram(self.stats.hist[name], data, lo, hi, th)
            else:
                hist, edges = np.histogram(data, bins=self.num_bins, range=(-th, th))
                self.stats.hist[name] = (hist, edges, lo, hi, th)
        else:
            lo, hi = float(mx.nd.min(arr).asscalar()), float(mx.nd.max(arr).asscalar())
        old = self.stats.min_max.get(name)
        self.stats.min_max[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


def _scalar(value: object) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def thresholds(stats: LayerStats, algorithms: Mapping[str, str],
               quantized_dtype: str) -> Dict[str, Tuple[float, float]]:
    """The calibration table MXNet wants, ``{tensor: (min, max)}``, each tensor by its own algorithm.

    ``minmax`` takes the observed range (MXNet's ``naive``); ``kl`` minimizes the KL divergence over the
    histogram exactly as MXNet's ``entropy`` mode does (its ``_get_optimal_thresholds``).
    """
    table: Dict[str, Tuple[float, float]] = {}
    kl_needed = {}
    for tensor, algo in algorithms.items():
        if tensor not in stats.min_max:
            raise KeyError(tensor)
        if algo == "kl":
            cached: Optional[Tuple[float, float]] = stats._kl_cache.get((tensor, quantized_dtype))
            if cached is None:
                if tensor not in stats.hist:
                    raise ValueError(f"no histogram was collected for {tensor}; kl needs one")
                kl_needed[tensor] = stats.hist[tensor]
            else:
                table[tensor] = cached
        elif algo == "minmax":
            table[tensor] = stats.min_max[tensor]
        else:
            raise ValueError(f"calibration algorithm {algo!r} is not supported by MXNet; use minmax or kl")
    if kl_needed:
        require_scipy()
        # _get_optimal_thresholds deletes what it consumes: hand it a copy
        found = mxq._get_optimal_thresholds(dict(kl_needed), quantized_dtype)
        for tensor, (lo, hi) in found.items():
            pair = (_scalar(lo), _scalar(hi))
            if stats.min_max[tensor][0] >= 0:
                # MXNet 1.9.1 gives (-th, th) for int8 even after a ReLU; a fused conv+relu then emits uint8
                # that the next conv rejects ("Expect int8 when data_min < 0"), as quantize_net_v2 does too.
                # A non-negative tensor gets (0, th), which is what minmax calibration gives it.
                pair = (0.0, pair[1])
            stats._kl_cache[(tensor, quantized_dtype)] = pair
            table[tensor] = pair
    return table
