"""Helpers shared by the tests."""

from __future__ import annotations


def split(cuts, *arrays):
    """Cut each array at the same sorted positions: the batches a dataloader would feed."""
    n = len(arrays[0])
    bounds = [0, *sorted(min(max(c, 0), n) for c in cuts), n]
    return [tuple(a[lo:hi] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:])]


def feed(metric, batches):
    metric.reset()
    for preds, labels in batches:
        metric.update(preds, labels)
    return metric.result()


def close(a, b, rel=1e-12, abs_=1e-15):
    """Floating-point equality: equal up to the rounding of a different summation order."""
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))

