"""How a model's accuracy is measured in a run: the user's ``eval_func``, or the adaptor over a loader and a metric."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from . import registry
from .adaptor import Adaptor
from .errors import ConfigError
from .metric import Metric, PostprocessedMetric

__all__ = ["as_score", "build_metric", "Evaluator"]


def as_score(value: Any, source: str) -> float:
    """``value`` as a finite float accuracy; anything else (NaN, a string, None, a bool) is a ValueError."""
    if (isinstance(value, (str, bytes, bool, np.bool_)) or not hasattr(value, "__float__")
            or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")):  # a 0-d bool array or tensor too
        raise ValueError(f"{source} returned {value!r} ({type(value).__name__}); it must return a number "
                         "(the accuracy, higher is better)")
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:  # e.g. a tensor of several elements
        raise ValueError(f"{source} returned {type(value).__name__} that is not one number: {exc}") from None
    if not math.isfinite(score):
        raise ValueError(f"{source} returned {score}; it must return a finite number")
    return score


def build_metric(spec: Any) -> Metric:
    """The metric a ``tuning.metric`` entry ``(name, args)`` names, built with its YAML arguments."""
    name, args = spec
    cls = registry.load("metric", name)
    try:
        if args is None:
            return cls()
        if isinstance(args, Mapping):
            return cls(**args)
        if isinstance(args, (list, tuple)):
            return cls(*args)
        return cls(args)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"tuning.metric.{name}", f"the {name} metric does not take {args!r}: {exc}") from None


class Evaluator:
    """Scores a model: ``eval_func(model)``, or ``adaptor.evaluate`` over ``eval_dataloader`` with the metric
    (fed ``postprocess(outputs)`` when given)."""

    def __init__(self, adaptor: Adaptor, eval_func: Optional[Callable[[Any], Any]],
                 eval_dataloader: Optional[Iterable[Any]], metric_spec: Any,
                 postprocess: Optional[Callable[[Any], Any]] = None) -> None:
        self.adaptor, self.eval_func, self.eval_dataloader = adaptor, eval_func, eval_dataloader
        self.metric: Optional[Metric] = build_metric(metric_spec) if eval_func is None else None
        if self.metric is not None and postprocess is not None:  # e.g. a detector's raw heads decoded into boxes
            self.metric = PostprocessedMetric(self.metric, postprocess)
        self.source = "eval_func" if eval_func is not None else f"the {metric_spec[0]} metric"

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better if self.metric is not None else True

    def __call__(self, model: Any) -> float:
        if self.eval_func is not None:
            return as_score(self.eval_func(model), self.source)
        assert self.metric is not None and self.eval_dataloader is not None
        return as_score(self.adaptor.evaluate(model, self.eval_dataloader, self.metric), self.source)
