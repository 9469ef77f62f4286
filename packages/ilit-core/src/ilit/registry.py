"""Plugin discovery through ``importlib.metadata`` entry points.

Built-ins register exactly as third-party packages do. A plugin that fails to import is reported as
a warning with its own error, and the others still load; asking for it by name then raises
:class:`ilit.PluginLoadError` chained to that error. Two distributions registering one name are warned
about, and the first found is used.

An adaptor declares which models it detects in the ``ilit.model_modules`` group: the entry's name is the
top-level module its models' classes come from (``torch``), its value the same object reference as the
adaptor's ``ilit.adaptors`` entry. Detection reads these declarations without importing any plugin.
"""

from __future__ import annotations

import difflib
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Dict, List

from . import catalog
from .errors import PluginLoadError, PluginNotFoundError

__all__ = ["GROUPS", "CONFIG_KEYS", "installed", "require", "load", "load_all", "install_hint",
           "adaptors_for_module"]

GROUPS = {
    "adaptor": "ilit.adaptors",
    "strategy": "ilit.strategies",
    "metric": "ilit.metrics",
    "objective": "ilit.objectives",
}
MODEL_MODULES_GROUP = "ilit.model_modules"

#: the config key that names a plugin of each kind, for errors
CONFIG_KEYS = {"adaptor": "framework.name", "strategy": "tuning.strategy", "metric": "tuning.metric",
               "objective": "tuning.objective"}
_warned: set = set()


def _entry_points(group: str) -> List[EntryPoint]:
    eps = entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # type: ignore[attr-defined]  # Python < 3.10


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


def installed(kind: str) -> Dict[str, EntryPoint]:
    """Installed plugins of one kind ('adaptor', 'strategy', 'metric', 'objective') by lower-case name."""
    out: Dict[str, EntryPoint] = {}
    for ep in _entry_points(GROUPS[kind]):
        name = ep.name.lower()
        first = out.setdefault(name, ep)
        if first.value != ep.value and (kind, name, ep.value) not in _warned:
            _warned.add((kind, name, ep.value))
            warnings.warn(f"two installed packages register the {kind} '{name}': {first.value} "
                          f"(from {_dist_name(first)}) and {ep.value} (from {_dist_name(ep)}); ilit uses the first. "
                          "Uninstall one of them to choose.", RuntimeWarning, stacklevel=2)
    return dict(sorted(out.items()))


def adaptors_for_module(module: str) -> List[str]:
    """Names of the installed adaptors that declare models from the top-level ``module`` (nothing is imported)."""
    by_value = {ep.value: name for name, ep in installed("adaptor").items()}
    found = [by_value[ep.value] for ep in _entry_points(MODEL_MODULES_GROUP)
             if ep.name == module and ep.value in by_value]
    return list(dict.fromkeys(found))


def install_hint(kind: str, name: str) -> str:
    """How to get plugin ``name``: the pip command of a first-party plugin, else what a package must register."""
    hint = catalog.pip_command(kind, name)
    if hint:
        return hint
    return f"install a package that registers '{name}' in the '{GROUPS[kind]}' entry-point group"


def _not_found(kind: str, name: str, available: Dict[str, EntryPoint]) -> PluginNotFoundError:
    """The error for a missing plugin: what is installed, the real name of an alias, close matches, how to get it."""
    listed = f"(installed: {', '.join(available) or 'none'})"
    alias = catalog.alias(kind, name)
    if catalog.pip_command(kind, name):  # a first-party plugin, just not installed
        close: List[str] = []
    elif alias:
        close = [alias]
    else:
        close = difflib.get_close_matches(name, list(available) + catalog.names(kind), n=3, cutoff=0.5)
    if close:
        options = " or ".join(f"'{c}'" for c in close)
        where = "; ".join(f"'{c}': {install_hint(kind, c)}" for c in close if c not in available)
        return PluginNotFoundError(CONFIG_KEYS[kind], f"no {kind} '{name}' is installed {listed}; did you mean "
                                   f"{options}?{f' To install {where}' if where else ''}")
    return PluginNotFoundError(CONFIG_KEYS[kind], f"no {kind} '{name}' is installed {listed}; "
                               f"to add one, {install_hint(kind, name)}")


def require(kind: str, name: str) -> None:
    """Raise :class:`ilit.PluginNotFoundError` unless a plugin ``name`` of this kind is installed (imports nothing)."""
    available = installed(kind)
    if name.lower() not in available:
        raise _not_found(kind, name.lower(), available)


def load(kind: str, name: str) -> Any:
    """Load the plugin class registered as ``name``; errors list what is installed and how to get more."""
    name = name.lower()
    available = installed(kind)
    ep = available.get(name)
    if ep is None:
        raise _not_found(kind, name, available)
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
