"""Save and load models without pickle: TorchScript archives, or a weights-only state dict.

``torch.jit.load`` reads TorchScript code and tensors, never arbitrary Python objects; a state dict is
read with ``torch.load(weights_only=True)``. Quantized FX models script as they are, so their saved
file holds the int8 weights (packed) and the graph; a model TorchScript cannot compile is traced on
an example batch (its Python control flow is then fixed to that batch's path, and the log says so).

A saved directory may come from someone else, so :func:`load_model` checks every file it reads and
refuses, with :class:`ModelFileError`, anything that is not what :func:`save_model` writes: a pickle
of Python objects fails in torch's restricted unpicklers before any of it runs.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Dict, Optional

import ilit
from ilit.logs import get_logger
import torch
from torch import nn

from .calibration import as_call
from .modes import eval_mode
from .version import __version__

__all__ = ["save_model", "load_model", "ModelFileError", "MODEL_FILE", "STATE_FILE", "META_FILE", "FORMATS"]

log = get_logger(__name__)
MODEL_FILE = "model.pt"
STATE_FILE = "state_dict.pt"
META_FILE = "ilit_model.json"
FORMATS = ("torchscript", "torchscript-trace", "state_dict")  # the "format" values save_model writes


class ModelFileError(ilit.ModelFileError):
    """A file of a saved-model directory is not what ilit-pytorch writes; nothing in it was run.

    ``file`` is its path; the message says what is wrong with it.
    """


def _script(model: Any, example: Optional[Any]) -> "tuple[Optional[torch.jit.ScriptModule], str]":
    if isinstance(model, torch.jit.ScriptModule):
        return model, "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(model)
            _ = scripted.code  # a Tensor argument defaulting to None scripts "fine" and then cannot be saved
            if example is not None:  # script types unannotated arguments as Tensor: a nested tuple or dict fails
                # checked on a copy: int8 kernels keep the first shape they run, and ``model`` must not have run
                scripted = torch.jit.script(copy.deepcopy(model))
                args, kwargs = as_call(model, example)
                with torch.no_grad():
                    scripted(*args, **kwargs)
            return scripted, "torchscript"
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if example is not None:
            try:
                # tracing runs the model: in eval mode and without autograd, so it updates nothing in it
                args, kwargs = as_call(model, example)
                with eval_mode(model), torch.no_grad():
                    if kwargs:
                        traced = torch.jit.trace(model, example_kwarg_inputs=kwargs, check_trace=False, strict=False)
                    else:
                        traced = torch.jit.trace(model, args, check_trace=False, strict=False)
                log.info("pytorch adaptor: %s does not compile with TorchScript (%s); saved a trace on an example "
                         "batch instead: Python control flow is fixed to that batch's path", type(model).__name__,
                         reason[:160])
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
        json.dump({"adaptor": "pytorch", "format": fmt, "ilit_pytorch": __version__, "torch": torch.__version__,
                   "class": type(model).__name__}, f)


def _refuse(file: str, what: str, exc: Optional[BaseException] = None) -> ModelFileError:
    detail = ""
    if exc is not None:  # torch's messages run long (and suggest unsafe retries): keep the line that says why
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln or "Unknown type name" in ln),
                   lines[0] if lines else "")
        detail = f" ({type(exc).__name__}: {why.split('. ')[0].rstrip('.')[:200]})"
    return ModelFileError(file, f"{file} is not {what} ilit-pytorch saved{detail}; it was refused and nothing in "
                          "it was "
                          "run. Load only directories written by adaptor.save (such as the tuner's best_model) "
                          "from a source you trust; if it should be one, save the model again")


def _read_meta(path: str) -> Dict[str, Any]:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{path} holds no model saved by ilit-pytorch (missing {META_FILE})")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _refuse(meta_path, "the metadata file", exc) from exc
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise _refuse(meta_path, "the metadata file",
                      ValueError(f"expected a JSON object whose 'format' is one of {', '.join(FORMATS)}"))
    return meta


def load_model(path: str, model: Optional[nn.Module] = None) -> nn.Module:
    """Read a model written by :func:`save_model`; a weights-only save needs the fp32 ``model`` to fill.

    Never runs code from the files: TorchScript archives go through ``torch.jit.load`` (TorchScript code
    and tensors only, no Python objects) and state dicts through ``torch.load(weights_only=True)``. A
    file that is anything else raises :class:`ModelFileError` naming it.
    """
    meta = _read_meta(path)
    if meta["format"].startswith("torchscript"):
        file = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path} is incomplete: {META_FILE} says TorchScript but {MODEL_FILE} is missing")
        try:
            return torch.jit.load(file, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError for a non-archive or a foreign pickle
            raise _refuse(file, "a TorchScript model", exc) from exc
    file = os.path.join(path, STATE_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is incomplete: {META_FILE} says state_dict but {STATE_FILE} is missing")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError for a foreign global, RuntimeError, ...
        raise _refuse(file, "a state dict", exc) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _refuse(file, "a state dict", TypeError(f"it holds a {type(state).__name__}, not a dict of tensors"))
    if model is None:
        raise ValueError(f"{path} holds only the weights of a {meta.get('class')} (it could not be scripted); "
                         "pass that model: adaptor.load(path, model=...)")
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out
