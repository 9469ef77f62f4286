"""``modelsize``: the bytes the adaptor's ``save`` writes for the model."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ..objective import Objective

__all__ = ["ModelSize", "saved_size"]


def saved_size(model: Any, adaptor: Any) -> int:
    """Total size in bytes of the files ``adaptor.save(model, dir)`` writes."""
    with tempfile.TemporaryDirectory(prefix="ilit-size-") as tmp:
        target = os.path.join(tmp, "model")
        adaptor.save(model, target)
        return sum(os.path.getsize(os.path.join(root, f)) for root, _d, files in os.walk(target) for f in files)


class ModelSize(Objective):
    """Smaller saved model is better."""

    unit = "bytes"

    def measure(self, model: Any, adaptor: Any, inputs: Any) -> float:
        return float(saved_size(model, adaptor))

    def format(self, value: float) -> str:
        return f"{value / 1e6:.3f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"
