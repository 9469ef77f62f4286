"""The ``Objective`` protocol: what the tuner optimizes among configs that meet accuracy (extension API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .adaptor import Adaptor

__all__ = ["Objective"]


class Objective(ABC):
    """Measure a model; register subclasses under the ``ilit.objectives`` entry-point group."""

    #: the unit printed beside values, e.g. "ms".
    unit: str = ""
    #: whether larger values are better; built-ins are all lower-is-better.
    higher_is_better: bool = False

    @abstractmethod
    def measure(self, model: Any, adaptor: "Adaptor", inputs: Any) -> float:
        """Measure ``model`` with ``adaptor``, running it on the batch ``inputs`` where needed."""

    def better(self, a: float, b: float) -> bool:
        """Whether result ``a`` is strictly better than result ``b``."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float) -> str:
        return f"{value:.4g} {self.unit}".strip()
