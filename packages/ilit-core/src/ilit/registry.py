"""Plugin discovery through ``importlib.metadata`` entry points.

Built-ins register exactly as third-party packages do. A plugin that fails to import is reported as
a warning with its own error, and the others still load; asking for it by name then raises
:class:`ilit.PluginLoadError` chained to that error.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Dict, List

from .errors import PluginLoadError, PluginNotFoundError

__all__ = ["GROUPS", "CONFIG_KEYS", "installed", "require", "load", "load_all", "install_hint"]

GROUPS = {
    "adaptor": "ilit.adaptors",
    "strategy": "ilit.strategies",
    "metric": "ilit.metrics",
    "objective": "ilit.objectives",
}

#: the config key that names a plugin of each kind, for errors
CONFIG_KEYS = {"adaptor": "framework.name", "strategy": "tuning.strategy", "metric": "tuning.metric",
               "objective": "tuning.objective"}

_KNOWN = {  # where the first-party plugins come from, for the "how to get it" hint
    ("adaptor", "pytorch"): "pip install ilit-pytorch 'ilit-pytorch[torch]'",
    ("adaptor", "tensorflow"): "pip install ilit-tensorflow 'ilit-tensorflow[tensorflow]'",
    ("adaptor", "mxnet"): "pip install ilit-mxnet 'ilit-mxnet[mxnet]'",
    ("strategy", "bayesian"): "pip install 'ilit-core[bayesian]'",
}
_METRICS = ("topk", "accuracy", "loss", "mae", "mse", "rmse", "f1", "squad_f1", "cocomap")


def _entry_points(group: str) -> List[EntryPoint]:
    eps = entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # type: ignore[attr-defined]  # Python < 3.10


def installed(kind: str) -> Dict[str, EntryPoint]:
    """Installed plugins of one kind ('adaptor', 'strategy', 'metric', 'objective') by lower-case name."""
    group = GROUPS[kind]
    out: Dict[str, EntryPoint] = {}
    for ep in _entry_points(group):
        out.setdefault(ep.name.lower(), ep)
    return dict(sorted(out.items()))


def install_hint(kind: str, name: str) -> str:
    if (kind, name) in _KNOWN:
        return _KNOWN[(kind, name)]
    if kind == "metric" and name in _METRICS:
        return "pip install ilit-metrics"
    if kind == "adaptor":
        return f"pip install ilit-{name}"
    return f"install a package that registers '{name}' in the '{GROUPS[kind]}' entry-point group"


def require(kind: str, name: str) -> None:
    """Raise :class:`ilit.PluginNotFoundError` unless a plugin ``name`` of this kind is installed.

    Nothing is imported."""
    if name.lower() not in installed(kind):
        load(kind, name)


def load(kind: str, name: str) -> Any:
    """Load the plugin class registered as ``name``; errors list what is installed and how to get more."""
    name = name.lower()
    available = installed(kind)
    ep = available.get(name)
    if ep is None:
        listed = ", ".join(available) or "none"
        raise PluginNotFoundError(
            CONFIG_KEYS[kind],
            f"no {kind} '{name}' is installed (installed: {listed}). Install it with: {install_hint(kind, name)}")
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's own error
        raise PluginLoadError(f"the {kind} '{name}' ({ep.value}) failed to import: {exc}") from exc


def load_all(kind: str) -> Dict[str, Any]:
    """Load every installed plugin of a kind; one that fails is warned about and skipped."""
    out: Dict[str, Any] = {}
    for name, ep in installed(kind).items():
        try:
            out[name] = ep.load()
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"ilit {kind} plugin '{name}' ({ep.value}) failed to load and is skipped: {exc}",
                          RuntimeWarning, stacklevel=2)
    return out
