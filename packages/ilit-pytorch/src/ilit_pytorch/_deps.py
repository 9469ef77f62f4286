"""Import torch, or fail with the install command instead of a bare ModuleNotFoundError."""

from __future__ import annotations

INSTALL_HINT = "pip install 'ilit-pytorch[torch]'  (or install a torch>=2.1 CPU wheel first)"


def require_torch():  # type: ignore[no-untyped-def]
    """Return the torch module; raise ImportError naming the install command if it is missing or too old."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"ilit-pytorch needs PyTorch, which is not installed. "
                          f"Install it with: {INSTALL_HINT}") from exc
    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 1):
        raise ImportError(f"ilit-pytorch needs torch>=2.1, found {torch.__version__}. Upgrade with: {INSTALL_HINT}")
    return torch
