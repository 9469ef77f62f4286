"""Save and load models without pickle: TorchScript archives, or a weights-only state dict.

``torch.jit.load`` reads TorchScript code and tensors, never arbitrary Python objects; a state dict is
read with ``torch.load(weights_only=True)``. Quantized FX models script as they are, so their saved
file holds the int8 weights (packed) and the graph; a model TorchScript cannot compile is traced on
an example batch (its Python control flow is then fixed to that batch's path, and the log says so).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from typing import Any, Optional

import torch
from torch import nn

from .version import __version__

__all__ = ["save_model", "load_model", "MODEL_FILE", "STATE_FILE", "META_FILE"]

log = logging.getLogger("ilit")
MODEL_FILE = "model.pt"
STATE_FILE = "state_dict.pt"
META_FILE = "ilit_model.json"


def _as_args(inputs: Any) -> Any:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _script(model: Any, example: Optional[Any]) -> "tuple[Optional[torch.jit.ScriptModule], str]":
    if isinstance(model, torch.jit.ScriptModule):
        return model, "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(model), "torchscript"
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if example is not None:
            try:
                traced = torch.jit.trace(model, _as_args(example), check_trace=False, strict=False)
                log.info("pytorch adaptor: %s does not compile with TorchScript (%s); saved a trace on an example "
                         "batch instead: Python control flow is fixed to that batch's path", type(model).__name__, reason[:160])
                return traced, "torchscript-trace"
            except Exception as exc:  # noqa: BLE001
                reason = f"{type(exc).__name__}: {exc}"
    log.info("pytorch adaptor: %s can be neither scripted nor traced (%s); saving its weights only",
             type(model).__name__, reason[:160])
    return None, "state_dict"


def save_model(model: nn.Module, path: str, example: Optional[Any] = None) -> None:
    """Write ``model`` into directory ``path`` as TorchScript (or a weights-only state dict) plus a small JSON."""
    os.makedirs(path, exist_ok=True)
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    scripted, fmt = _script(model, example)
    if scripted is not None:
        torch.jit.save(scripted, os.path.join(path, MODEL_FILE))
    else:
        torch.save(model.state_dict(), os.path.join(path, STATE_FILE))
    with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
        json.dump({"format": fmt, "ilit_pytorch": __version__, "torch": torch.__version__,
                   "class": type(model).__name__}, f)


def load_model(path: str, model: Optional[nn.Module] = None) -> nn.Module:
    """Read a model written by :func:`save_model`; a weights-only save needs the fp32 ``model`` to fill."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} holds no model saved by ilit-pytorch (missing {META_FILE})")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format", "").startswith("torchscript"):
        return torch.jit.load(os.path.join(path, MODEL_FILE), map_location="cpu")
    state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)
    if model is None:
        raise ValueError(f"{path} holds only the weights of a {meta.get('class')} (it could not be scripted); "
                         "pass that model: adaptor.load(path, model=...)")
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out
