"""Regression errors: ``mae``, ``mse`` and ``rmse``; lower is better.

Each keeps a float64 sum and an element count, so memory does not grow with the dataset. The mean
runs over every element: for (N,) data, and for (N, K) data with the default uniform averaging over
outputs, ``mae`` and ``mse`` equal ``sklearn.metrics.mean_absolute_error`` and
``mean_squared_error``. ``rmse`` is ``sqrt(mse)`` over all elements, i.e.
``numpy.sqrt(numpy.mean((preds - labels) ** 2))``, which for (N,) data is also
``sklearn.metrics.root_mean_squared_error``.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from ilit import Metric

from ._checks import no_data, numeric

__all__ = ["MAE", "MSE", "RMSE"]


class _ElementwiseError(Metric):
    name = ""
    higher_is_better = False

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self.total = 0

    def _pair(self, preds: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
        p = numeric(self.name, "preds", preds)
        y = numeric(self.name, "labels", labels)
        if p.ndim == 0 or y.ndim == 0:
            raise ValueError(f"{self.name}: preds and labels must be arrays of shape (N,) or (N, ...), one row per "
                             f"sample; got preds of shape {p.shape} and labels of shape {y.shape}")
        if p.shape != y.shape:
            column = {(p.shape[0],), (p.shape[0], 1)}
            if not (len(p) == len(y) and {p.shape, y.shape} == column):
                raise ValueError(f"{self.name}: preds and labels must have the same shape; got preds of shape "
                                 f"{p.shape} and labels of shape {y.shape}")
            y = y.reshape(p.shape)
        return p.astype(np.float64), y.astype(np.float64)

    def _add(self, errors: np.ndarray) -> None:
        self._sum += float(errors.sum())
        self.total += errors.size

    def _mean(self) -> float:
        if not self.total:
            raise no_data(self.name)
        return self._sum / self.total


class MAE(_ElementwiseError):
    """Mean absolute error, equal to ``sklearn.metrics.mean_absolute_error``. YAML: ``metric: mae``."""

    name = "mae"

    def update(self, preds: Any, labels: Any) -> None:
        p, y = self._pair(preds, labels)
        self._add(np.abs(p - y))

    def result(self) -> float:
        return self._mean()


class MSE(_ElementwiseError):
    """Mean squared error, equal to ``sklearn.metrics.mean_squared_error``. YAML: ``metric: mse``."""

    name = "mse"

    def update(self, preds: Any, labels: Any) -> None:
        p, y = self._pair(preds, labels)
        self._add(np.square(p - y))

    def result(self) -> float:
        return self._mean()


class RMSE(MSE):
    """Root mean squared error over all elements, ``sqrt(mse)``. YAML: ``metric: rmse``."""

    name = "rmse"

    def result(self) -> float:
        return math.sqrt(self._mean())
