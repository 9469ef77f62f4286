"""The activation range algorithms, on data whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from ilit_tensorflow.ranges import compute_range, kl_threshold, subsample


def test_minmax_keeps_the_observed_range():
    assert compute_range([np.array([0.5, 2.0])], "minmax", -1.0, 3.0) == (-1.0, 3.0)


def test_kl_and_percentile_clip_rare_outliers_but_not_the_bulk():
    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(100_000)).astype(np.float32)
    values[:3] = 100.0  # three outliers stretch minmax 25x
    lo, hi = 0.0, 100.0
    kl = compute_range([values], "kl", lo, hi)
    pct = compute_range([values], "percentile", lo, hi)
    # non-negative: [0, threshold]; 256 levels over 2048 bins cannot clip below 256 bins (12.5 here)
    assert kl[0] == 0.0 and 2.5 < kl[1] <= 12.5
    assert 3.0 < pct[1] < 5.0 and pct[0] >= 0.0         # 99.99th percentile of |N(0,1)| is ~3.9
    signed = rng.standard_normal(100_000).astype(np.float32)
    signed[:2] = [-80.0, 80.0]
    lo_s, hi_s = compute_range([signed], "kl", -80.0, 80.0)
    assert -10.0 < lo_s < -2.5 and 2.5 < hi_s < 10.0 and lo_s == -hi_s


def test_kl_threshold_is_the_max_for_uniform_data():
    values = np.linspace(0.0, 1.0, 20_000)
    assert kl_threshold(values) == pytest.approx(1.0, rel=0.01)


def test_subsample_bounds_memory_and_keeps_the_extremes():
    rng = np.random.default_rng(0)
    big = rng.standard_normal(300_000).astype(np.float32)
    s = subsample(big, rng, limit=1000)
    assert s.size == 1002 and s.min() == big.min() and s.max() == big.max()
    small = np.arange(10, dtype=np.float64)
    np.testing.assert_array_equal(subsample(small, rng), small.astype(np.float32))


def test_unknown_algorithm_is_an_error():
    with pytest.raises(ValueError, match="unknown calibration algorithm"):
        compute_range([np.ones(3)], "entropy", 0.0, 1.0)
