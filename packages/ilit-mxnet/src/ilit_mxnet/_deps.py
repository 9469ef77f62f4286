"""Checks the fragile MXNet 1.9.1 environment before anything imports mxnet, so errors say what to install."""

from __future__ import annotations

import re
from typing import Any, Tuple

__all__ = ["NUMPY_PIN", "check_numpy", "import_mxnet", "require_scipy", "scipy_available"]

#: the numpy that MXNet 1.9.1 (the last release) works with on Python 3.11.
NUMPY_PIN = "numpy==1.23.5"
MXNET_EXTRA = "pip install 'ilit-mxnet[mxnet]'"
KL_EXTRA = "pip install 'ilit-mxnet[kl]'"


def _version(text: str) -> Tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def check_numpy() -> None:
    """Raise ImportError if numpy is too new for MXNet 1.9.1 (it uses ``np.bool``, removed in numpy 1.24)."""
    import numpy

    if _version(numpy.__version__) >= (1, 24):
        raise ImportError(
            f"ilit-mxnet runs MXNet 1.9.1, which does not work with numpy {numpy.__version__}: numpy 1.24 removed "
            f"np.bool (and numpy 2 np.PZERO), which MXNet still uses. Install numpy 1.23.5 in this environment: "
            f"pip install '{NUMPY_PIN}' (or {MXNET_EXTRA}, which pins numpy<1.24). Keep MXNet in its own "
            f"virtualenv: TensorFlow and recent PyTorch need a newer numpy.")


def import_mxnet() -> Any:
    """Import mxnet after the numpy check; a missing mxnet names the extra that installs it."""
    check_numpy()
    try:
        import mxnet
    except ImportError as exc:
        raise ImportError(f"ilit-mxnet needs MXNet 1.9.1, which is not importable here ({exc}). "
                          f"Install it with: {MXNET_EXTRA}") from exc
    return mxnet


def scipy_available() -> bool:
    """Whether ``scipy.stats`` imports: MXNet's entropy (KL) calibration needs it."""
    try:
        from scipy import stats  # noqa: F401  (imported only to see that it imports)
    except ImportError:
        return False
    return True


def require_scipy() -> None:
    """Raise ImportError naming the ``kl`` extra when scipy is missing."""
    if not scipy_available():
        raise ImportError("the kl calibration algorithm (MXNet's 'entropy' mode) needs scipy, which is not "
                          f"installed. Install it with: {KL_EXTRA}, or use calibration algorithm minmax")
