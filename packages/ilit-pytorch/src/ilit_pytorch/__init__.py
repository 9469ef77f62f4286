"""ilit-pytorch: the PyTorch adaptor for ilit (entry point ``pytorch`` in ``ilit.adaptors``).

Importing this package does not import torch; the adaptor does, and says how to install it if missing.
"""

from .version import __version__

__all__ = ["PyTorchAdaptor", "__version__"]


def __getattr__(name: str):  # lazy, so `import ilit_pytorch` works (and explains) without torch
    if name == "PyTorchAdaptor":
        from .adaptor import PyTorchAdaptor

        return PyTorchAdaptor
    raise AttributeError(name)
