"""Activation range algorithms (minmax, percentile, kl) over values collected from calibration batches."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

ALGORITHMS = ("minmax", "kl", "percentile")
#: values kept per tensor per batch; enough for percentiles and histograms, bounded for big models.
SAMPLES_PER_BATCH = 1 << 16


def subsample(values: np.ndarray, rng: np.random.Generator, limit: int = SAMPLES_PER_BATCH) -> np.ndarray:
    """A flat float32 sample of ``values``: all of them when few, else a uniform random subset, plus min and max."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    if flat.size <= limit:
        return flat.copy()
    pick = flat[rng.integers(0, flat.size, limit)]
    return np.concatenate([pick, [flat.min(), flat.max()]]).astype(np.float32)


def percentile_range(values: np.ndarray, pct: float = 99.99) -> Tuple[float, float]:
    """Clip the ``100 - pct`` percent tails on each side."""
    lo, hi = np.percentile(values, [100.0 - pct, pct])
    return float(lo), float(hi)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    q = np.where(q > 0, q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def kl_threshold(abs_values: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """The clipping threshold on ``|x|`` that minimises the KL divergence to its ``levels``-level quantization.

    The entropy calibration of TensorRT and MXNet: for each candidate threshold the tail beyond it
    is folded into the last bin and the clipped histogram is quantized to ``levels`` bins.
    """
    amax = float(abs_values.max()) if abs_values.size else 0.0
    if amax <= 0.0:
        return 0.0
    hist, edges = np.histogram(abs_values, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1, 8):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()
        if ref.sum() == 0:
            continue
        # quantize the first i bins into `levels` groups, spreading each group's mass over its non-empty bins
        starts = np.array([g[0] for g in np.array_split(np.arange(i), levels)])
        sizes = np.diff(np.append(starts, i))
        src = hist[:i]
        mass = np.add.reduceat(src, starts)
        nonempty = np.add.reduceat((src > 0).astype(np.float64), starts)
        per_bin = np.repeat(np.divide(mass, nonempty, out=np.zeros_like(mass), where=nonempty > 0), sizes)
        q = np.where(src > 0, per_bin, 0.0)
        p_n, q_n = ref / ref.sum(), q / max(q.sum(), 1e-12)
        kl = _kl(p_n, q_n)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def compute_range(samples: List[np.ndarray], algorithm: str, lo: float, hi: float) -> Tuple[float, float]:
    """The (min, max) ``algorithm`` gives for the collected samples, within the observed [lo, hi]."""
    if algorithm == "minmax" or not samples:
        return lo, hi
    values = np.concatenate(samples)
    if algorithm == "percentile":
        plo, phi = percentile_range(values)
        return max(lo, plo), min(hi, phi)
    if algorithm == "kl":
        nonneg = lo >= 0.0
        t = kl_threshold(np.abs(values), levels=256 if nonneg else 128)
        if t <= 0.0:
            return lo, hi
        return (0.0 if nonneg else max(lo, -t)), min(hi, t)
    raise ValueError(f"unknown calibration algorithm {algorithm!r}; expected one of {ALGORITHMS}")
