"""ilit-pytorch: the PyTorch adaptor for ilit (entry point ``pytorch`` in ``ilit.adaptors``).

Importing this package does not import torch; the adaptor does, and says how to install it if missing.
"""

from .version import __version__

__all__ = ["PyTorchAdaptor", "export_torchscript", "load_torchscript_executing_code", "__version__"]


def __getattr__(name: str):  # lazy, so `import ilit_pytorch` works (and explains) without torch
    if name == "PyTorchAdaptor":
        from .adaptor import PyTorchAdaptor

        return PyTorchAdaptor
    if name in ("export_torchscript", "load_torchscript_executing_code"):
        from ._deps import require_torch

        require_torch()
        from . import serialize

        return getattr(serialize, name)
    raise AttributeError(name)
