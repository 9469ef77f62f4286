"""The ``Metric`` protocol: a streaming accuracy measure (extension API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

__all__ = ["Metric", "PostprocessedMetric"]


class Metric(ABC):
    """Streaming metric. Register subclasses under the ``ilit.metrics`` entry-point group.

    The adaptor calls ``reset()``, then ``update(preds, labels)`` once per batch with numpy data,
    then ``result()``. The YAML ``tuning.metric: {name: args}`` builds it as ``cls(args)`` for a
    scalar, ``cls(**args)`` for a mapping and ``cls()`` for nothing.
    """

    #: whether a larger result is better (accuracy) or worse (loss).
    higher_is_better: bool = True

    @abstractmethod
    def update(self, preds: Any, labels: Any) -> None:
        """Accumulate one batch."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated."""

    @abstractmethod
    def result(self) -> float:
        """The metric over everything accumulated since the last reset."""


class PostprocessedMetric(Metric):
    """``metric`` fed ``postprocess(outputs)`` in place of the model's outputs: ``tune(..., postprocess=...)``.

    This is how usage (a) scores models whose outputs a metric cannot read as they are, e.g. a detector
    whose raw head outputs must be decoded (and NMS applied) into cocomap's per-image box dicts.
    """

    def __init__(self, metric: Metric, postprocess: Callable[[Any], Any]) -> None:
        self.metric = metric
        self.postprocess = postprocess
        self.higher_is_better = metric.higher_is_better

    def update(self, preds: Any, labels: Any) -> None:
        self.metric.update(self.postprocess(preds), labels)

    def reset(self) -> None:
        self.metric.reset()

    def result(self) -> float:
        return self.metric.result()
