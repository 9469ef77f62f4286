"""Calibration observers that torch.ao does not ship: ``percentile`` clipping over a histogram."""

from __future__ import annotations

from typing import Tuple

import torch
from torch.ao.quantization.observer import HistogramObserver

__all__ = ["PercentileObserver"]


class PercentileObserver(HistogramObserver):
    """A histogram observer whose range is clipped to the ``percentile`` of the observed values.

    The histogram is collected exactly as :class:`HistogramObserver` does; only the search for the
    range differs: the lower and upper bounds are the ``(100 - p)`` and ``p`` percentiles (the lower
    one stays at the minimum when it is 0, as after a ReLU), so rare outliers no longer stretch the scale.
    """

    def __init__(self, *args, percentile: float = 99.99, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double()
        total = hist.sum()
        if total <= 0:
            return self.min_val, self.max_val
        cdf = torch.cumsum(hist, 0) / total
        width = (self.max_val - self.min_val) / self.bins
        q = self.percentile / 100.0
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)).clamp(max=self.bins - 1))
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - q, dtype=cdf.dtype)).clamp(max=self.bins - 1))
        new_max = self.min_val + width * (hi_bin + 1)
        new_min = self.min_val + width * lo_bin if self.min_val < 0 else self.min_val
        return new_min.to(self.min_val.dtype), torch.minimum(new_max, self.max_val).to(self.max_val.dtype)
