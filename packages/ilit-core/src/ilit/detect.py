"""Which adaptor takes a model: ``framework.name`` when set, else the adaptors that declare the model's package."""

from __future__ import annotations

from typing import Any, Optional

from . import registry
from .errors import ConfigError

__all__ = ["adaptor_class"]


def _kind(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def adaptor_class(name: Optional[str], model: Any) -> type:
    """The adaptor class for ``model``: the one named, or the one detected from the model's classes' packages.

    Detection tries first the adaptors that declare (in the ``ilit.model_modules`` entry-point group) a package
    among the model's classes, so a torch model never imports TensorFlow; only then every installed adaptor.
    """
    if name:
        cls = registry.load("adaptor", name)
        if not cls.accepts(model):
            reason = cls.reject_reason(model)
            raise ConfigError("framework.name", f"is {name!r}, but the model given to tune() is a {_kind(model)}, "
                              f"which the {name} adaptor does not take{f' ({reason})' if reason else ''}; pass a "
                              f"{name} model, or set framework.name to the model's framework (installed adaptors: "
                              f"{', '.join(registry.installed('adaptor'))})")
        return cls
    for module in dict.fromkeys(c.__module__.split(".")[0] for c in type(model).__mro__):
        for guess in registry.adaptors_for_module(module):
            cls = registry.load("adaptor", guess)
            if cls.accepts(model):
                return cls
            reason = cls.reject_reason(model)
            if reason:  # the model's own framework refuses it: no other adaptor (or framework) is loaded
                raise ConfigError("framework.name", f"a {_kind(model)} model belongs to the {guess} adaptor, "
                                  f"which does not take it ({reason})")
    loaded = registry.load_all("adaptor")
    for cls in loaded.values():
        if cls.accepts(model):
            return cls
    raise ConfigError("framework.name", f"could not tell which framework a {type(model).__module__}."
                      f"{type(model).__name__} model belongs to; set framework.name to one of the "
                      f"installed adaptors: {', '.join(loaded) or 'none (pip install ilit-pytorch, ...)'}")
