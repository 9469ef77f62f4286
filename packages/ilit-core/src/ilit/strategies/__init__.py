"""Built-in strategies; each is registered in the ``ilit.strategies`` entry-point group."""

from .basic import BasicStrategy

__all__ = ["BasicStrategy"]
