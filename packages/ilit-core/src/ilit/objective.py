"""The ``Objective`` protocol: what the tuner optimizes among configs that meet accuracy (extension API).

An objective measures one model (:meth:`Objective.measure`) and compares a candidate with the FP32
baseline (:meth:`Objective.compare`, giving a :class:`Comparison`). The tuner ranks trials by the
comparison's ``ratio``, so an objective whose measurements drift with machine load (``performance``)
can measure both models in the same time window and report how far its ratio can be trusted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .adaptor import Adaptor

__all__ = ["Objective", "Comparison", "ratio_of"]


def ratio_of(value: float, baseline: float) -> float:
    """``value / baseline``, with 0/0 = 1 (equal) and x/0 = inf for x > 0, so a ratio is always defined."""
    if baseline == 0:
        return 1.0 if value == 0 else math.inf
    return value / baseline


@dataclass(frozen=True)
class Comparison:
    """A candidate measured against the FP32 baseline.

    ``ratio`` is ``value / baseline`` (for ``performance``: candidate latency over FP32 latency, so
    below 1 is faster). ``spread`` is the relative uncertainty of ``ratio`` (0.04 means about
    ``ratio`` +- 4%; 0 when each model was measured once). ``reliable`` is False when the spread stayed
    wider than the objective trusts (a busy machine). ``rounds`` counts the interleaved timing rounds
    (0 when not interleaved) and ``threads`` the thread count timing used (None: not controlled).
    """

    value: float
    baseline: float
    ratio: float
    spread: float = 0.0
    reliable: bool = True
    rounds: int = 0
    threads: Optional[int] = None

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-safe dict (for history.json)."""
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``ratio 0.254 +- 3.1% (12 rounds, 1 thread)``, or with ``unreliable`` when the spread is too wide."""
        parts = [f"ratio {self.ratio:.3g}"]
        if self.spread:
            parts.append(f"+- {100 * self.spread:.1f}%")
        extra = []
        if self.rounds:
            extra.append(f"{self.rounds} rounds")
        if self.threads:
            extra.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        if extra:
            parts.append(f"({', '.join(extra)})")
        if not self.reliable:
            parts.append("unreliable: the machine is too busy for a stable figure")
        return " ".join(parts)


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
        """Measure ``model`` against ``baseline_model`` (the FP32 model); the default measures each once and divides.

        Objectives whose measurements drift over time (latency on a shared machine) override this to
        measure both in the same window. The caller puts ``baseline_model`` in inference mode
        (``adaptor.fp32_context``) around the call.
        """
        value = float(self.measure(model, adaptor, inputs))
        baseline = float(self.measure(baseline_model, adaptor, inputs))
        return Comparison(value=value, baseline=baseline, ratio=ratio_of(value, baseline))

    def better(self, a: float, b: float) -> bool:
        """Whether result ``a`` is strictly better than result ``b``."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float) -> str:
        return f"{value:.4g} {self.unit}".strip()
