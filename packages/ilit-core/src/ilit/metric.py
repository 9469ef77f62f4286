"""The ``Metric`` protocol: a streaming accuracy measure (extension API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["Metric"]


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
