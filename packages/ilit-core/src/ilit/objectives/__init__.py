"""Built-in objectives; each is registered in the ``ilit.objectives`` entry-point group."""

from .footprint import Footprint
from .modelsize import ModelSize, saved_size
from .performance import Performance

__all__ = ["Performance", "Footprint", "ModelSize", "saved_size"]
