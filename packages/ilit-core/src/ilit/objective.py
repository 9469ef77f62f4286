"""The ``Objective`` protocol: what the tuner optimizes among configs that meet accuracy (extension API)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .adaptor import Adaptor

__all__ = ["Objective", "Comparison"]


@dataclass(frozen=True)
class Comparison:
    """A candidate measured against the FP32 model in the same window: the ratio is what trials are compared by."""

    value: float  # the candidate's objective value, in the objective's unit
    baseline: float  # the FP32 model's value, measured beside it
    ratio: float  # value / baseline
    spread: float = 0.0  # relative spread of the ratio between measurement rounds (0 where it is exact)
    reliable: bool = True  # False when the spread stayed too wide to trust (e.g. a busy machine)


class Objective(ABC):
    """Measure a model; register subclasses under the ``ilit.objectives`` entry-point group."""

    #: the unit printed beside values, e.g. "ms".
    unit: str = ""
    #: whether larger values are better; built-ins are all lower-is-better.
    higher_is_better: bool = False

    @abstractmethod
    def measure(self, model: Any, adaptor: "Adaptor", inputs: Any) -> float:
        """Measure ``model`` with ``adaptor``, running it on the batch ``inputs`` where needed."""

    def compare(self, model: Any, baseline_model: Any, adaptor: "Adaptor", inputs: Any) -> Comparison:
        """Measure ``model`` against ``baseline_model`` (the FP32 model). The default measures each once and divides;
        timing objectives override it to measure both interleaved, so load on the machine shifts both alike."""
        value = self.measure(model, adaptor, inputs)
        base = self.measure(baseline_model, adaptor, inputs)
        return Comparison(value, base, value / base if base else math.nan)

    def better(self, a: float, b: float) -> bool:
        """Whether result ``a`` is strictly better than result ``b``."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float) -> str:
        return f"{value:.4g} {self.unit}".strip()
