"""The first-party plugins the ilit project publishes, and the names users commonly write for them.

Used only to word errors about a plugin that is *not* installed (an installed plugin describes itself through its
entry points): which pip command brings it, and which real name an alias means. Nothing here decides behaviour.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

__all__ = ["pip_command", "alias", "names"]

_PACKAGES: Dict[Tuple[str, str], str] = {
    ("adaptor", "pytorch"): ("pip install torch==2.13.0 (the CPU build, first), then "
                              "pip install 'ilit-pytorch[torch]'"),
    ("adaptor", "tensorflow"): "pip install 'ilit-tensorflow[tensorflow]'",
    ("adaptor", "mxnet"): "pip install 'ilit-mxnet[mxnet]' numpy==1.23.5",
    ("strategy", "basic"): "pip install ilit-core",
    ("strategy", "mse"): "pip install ilit-core",
    ("strategy", "bayesian"): "pip install 'ilit-core[bayesian]'",
    ("objective", "performance"): "pip install ilit-core",
    ("objective", "footprint"): "pip install ilit-core",
    ("objective", "modelsize"): "pip install ilit-core",
    **{("metric", m): "pip install ilit-metrics" for m in
       ("topk", "accuracy", "loss", "mae", "mse", "rmse", "f1", "squad_f1")},
    ("metric", "cocomap"): "pip install 'ilit-metrics[coco]'",
}

_ALIASES: Dict[Tuple[str, str], str] = {
    ("adaptor", "torch"): "pytorch",
    ("adaptor", "pt"): "pytorch",
    ("adaptor", "tf"): "tensorflow",
    ("adaptor", "keras"): "tensorflow",
    ("adaptor", "tflite"): "tensorflow",
    ("adaptor", "mx"): "mxnet",
    ("adaptor", "gluon"): "mxnet",
    ("metric", "top1"): "topk",
    ("metric", "top-1"): "topk",
    ("metric", "top5"): "topk",
    ("metric", "map"): "cocomap",
    ("objective", "latency"): "performance",
    ("objective", "memory"): "footprint",
    ("objective", "size"): "modelsize",
}


def pip_command(kind: str, name: str) -> Optional[str]:
    """The pip command that installs the first-party plugin ``name``, or None if ilit publishes none of that name."""
    return _PACKAGES.get((kind, name))


def alias(kind: str, name: str) -> Optional[str]:
    """The real plugin name a common alias means (``torch`` -> ``pytorch``), or None."""
    return _ALIASES.get((kind, name))


def names(kind: str) -> List[str]:
    """The first-party plugin names of one kind."""
    return [n for (k, n) in _PACKAGES if k == kind]
