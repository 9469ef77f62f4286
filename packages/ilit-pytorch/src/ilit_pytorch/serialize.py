"""Save and load models as data only: tensors plus the recorded recipe, never code.

A saved directory holds ``state_dict.pt`` (``torch.save`` of the model's state dict: int8 weights, scales,
zero points, fp32 weights of fallback ops) and ``ilit_model.json`` (the adaptor name, versions and, for a
quantized model, how it was built: the ``tune_cfg`` and the backend path). :func:`load_model` reads the
tensors with ``torch.load(weights_only=True)``, rebuilds the quantized structure from the user's FP32
model with that recipe and no calibration, and loads the recorded state into it (the approach of Intel
Neural Compressor's ``load(dir, fp32_model)``). So loading never runs code from the files: the only code
that runs is the user's own model class, which the caller passes.

TorchScript and ``torch.export`` archives are programs: ``torch.jit.load`` runs a module's
``__setstate__``. :func:`export_torchscript` writes one for deployment; reading one back is
:func:`load_torchscript_executing_code`, an explicit opt-in for files you trust.

Every file read is checked first: regular files only, sizes below a limit before anything is read
(``max_bytes``; by default a multiple of the FP32 model's size), and a zip archive must store its
members uncompressed (``torch.save`` never compresses), so a small file cannot inflate to gigabytes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import warnings
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional

import ilit
import torch
from ilit.interrupts import raise_if_interrupted
from ilit.logs import get_logger
from ilit.text import printable
from torch import nn

from .calibration import as_call
from .modes import eval_mode
from .version import __version__

__all__ = ["save_model", "load_model", "export_torchscript", "load_torchscript_executing_code", "load_limit",
           "ModelFileError", "STATE_FILE", "META_FILE", "MODEL_FILE", "FORMATS", "BUILD_ATTR", "MAX_BYTES_ENV"]

log = get_logger(__name__)
STATE_FILE = "state_dict.pt"
META_FILE = "ilit_model.json"
MODEL_FILE = "model.pt"  # what export_torchscript writes by default; never read by load_model
FORMATS = ("state_dict",)  # the "format" values save_model writes
LEGACY_FORMATS = ("torchscript", "torchscript-trace")  # written by ilit-pytorch <= 0.x: programs, not data
#: attribute a backend sets on each quantized model: the JSON-safe recipe ``rebuild`` takes to make it again
BUILD_ATTR = "_ilit_build"
#: environment variable overriding the default size limit of a loaded state file (bytes)
MAX_BYTES_ENV = "ILIT_PYTORCH_MAX_LOAD_BYTES"
_META_MAX = 16 << 20  # a tune_cfg for 10k ops is about 2 MB
#: the members of the zip ``torch.save`` writes, after its one top-level folder (tensors are ``data/<n>``)
_TORCH_SAVE_MEMBERS = frozenset({"data.pkl", "byteorder", "version", ".format_version", ".storage_alignment",
                                 ".data/serialization_id", ".data/version"})
_DATA_MEMBER = re.compile(r"data/[0-9]+")


class ModelFileError(ilit.ModelFileError):
    """A file of a saved-model directory is not what ilit-pytorch writes; nothing in it was run.

    ``file`` is its path; the message says what is wrong with it.
    """


# ----------------------------------------------------------------------------- saving
def save_model(model: nn.Module, path: str, build: Optional[Mapping[str, Any]] = None,
               state: Optional[nn.Module] = None) -> None:
    """Write the state dict of ``state`` (default ``model``) and the JSON ``build`` recipe (default
    ``model._ilit_build``; None for an FP32 model) into directory ``path``. The bytes depend only on the
    tensors and the recipe, so saving one model twice gives the same files (``objective: modelsize``)."""
    os.makedirs(path, exist_ok=True)
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        if os.path.lexists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    if build is None:
        build = getattr(model, BUILD_ATTR, None)
    torch.save((state if state is not None else model).state_dict(), os.path.join(path, STATE_FILE))
    meta = {"format": "state_dict", "adaptor": "pytorch", "ilit_pytorch": __version__, "torch": torch.__version__,
            "class": type(model).__name__, "build": build}
    with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, sort_keys=True)


def export_torchscript(model: nn.Module, file: str, example: Optional[Any] = None) -> str:
    """Write ``model`` as a TorchScript archive for deployment (scripted; traced on ``example`` if scripting
    fails); return ``"torchscript"`` or ``"torchscript-trace"``. ilit never reads such a file back by itself:
    loading one runs code (see :func:`load_torchscript_executing_code`)."""
    from .backend import PT2EModel

    if isinstance(model, PT2EModel):  # tracing the wrapper would compile it; its graph holds torchao ops
        raise TypeError("a PT2E model is deployed as its graph: torch.export.export(model.graph_module, args) and "
                        "torch.export.save (or call the model, which compiles it with Inductor); "
                        "export_torchscript takes FX and eager models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.jit.save(model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model), file)
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - TorchScript raises many types for unsupported Python
            if example is None:
                raise ValueError(f"{type(model).__name__} does not compile with TorchScript ({type(exc).__name__}); "
                                 "pass example=<a batch of inputs> to export a trace") from exc
        args, kwargs = as_call(model, example)
        with eval_mode(model), torch.no_grad():
            if kwargs:
                traced = torch.jit.trace(model, example_kwarg_inputs=kwargs, check_trace=False, strict=False)
            else:
                traced = torch.jit.trace(model, args, check_trace=False, strict=False)
        torch.jit.save(traced, file)
        return "torchscript-trace"


def load_torchscript_executing_code(file: str) -> Any:
    """``torch.jit.load(file)``: RUNS CODE from the file (TorchScript methods such as ``__setstate__`` run
    while loading). Use it only on archives you trust, e.g. your own :func:`export_torchscript` output."""
    log.warning("pytorch adaptor: loading TorchScript %s runs the code it holds; only load files you trust",
                printable(file))
    return torch.jit.load(file, map_location="cpu")


# ----------------------------------------------------------------------------- reading, checked
def _refuse(file: str, what: str, exc: Optional[BaseException] = None) -> ModelFileError:
    detail = ""
    if exc is not None:  # torch's messages run long (and suggest unsafe retries): keep the line that says why
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln or "Unknown type name" in ln),
                   lines[0] if lines else "")
        detail = f" ({type(exc).__name__}: {why.split('. ')[0].rstrip('.')[:200]})"
    return ModelFileError(file, f"{file} is not {what} ilit-pytorch saved{detail}; it was refused and nothing in "
                          "it was run. Load only directories written by adaptor.save (such as the tuner's best_model) "
                          "from a source you trust; if it should be one, save the model again")


def _open_regular(file: str, what: str, limit: int) -> BinaryIO:
    """``file`` opened for reading, refusing before reading a byte anything but a regular file (not a symlink,
    FIFO, device or directory) of at most ``limit`` bytes. Opened once and checked on the open file (``fstat``),
    so it cannot be swapped between the check and the read; ``O_NONBLOCK`` so a FIFO cannot block ``open``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if os.path.islink(file):
        raise _refuse(file, what, ValueError("it is a symbolic link; ilit-pytorch reads only the regular files "
                                             "its save writes (copy the files instead of linking them)"))
    try:
        fd = os.open(file, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: a symlink swapped in after the check above
        raise _refuse(file, what, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(file, what, ValueError("it is not a regular file (a FIFO, a device or a directory?)"))
        if st.st_size > limit:
            raise _refuse(file, what, ValueError(f"it is {st.st_size} bytes, over the limit of {limit} bytes; pass "
                                                 f"max_bytes= (or set {MAX_BYTES_ENV}) if it is genuine"))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_limit(model: Optional[nn.Module], max_bytes: Optional[int] = None) -> int:
    """The most bytes a state file may hold (declared uncompressed): ``max_bytes``, else
    ``$ILIT_PYTORCH_MAX_LOAD_BYTES``, else twice the FP32 model's tensors plus 64 MiB (a quantized model
    holds at most the FP32 tensors, plus small scales), or 4 GiB without a model."""
    if max_bytes is not None:
        return int(max_bytes)
    env = os.environ.get(MAX_BYTES_ENV, "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"{MAX_BYTES_ENV}={env!r} is not a number of bytes") from None
    if model is None:
        return 4 << 30
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    return 2 * size + (64 << 20)


def _check_archive(f: BinaryIO, file: str, limit: int) -> None:
    """Refuse a state file that is not a zip of stored members, or whose members declare more than ``limit`` bytes.

    ``torch.save`` writes an uncompressed zip; torch's reader would inflate a deflated member, so a few MB of
    zeros could become gigabytes in memory. The declared sizes are checked before torch reads anything, and
    only the members ``torch.save`` writes are allowed (a TorchScript archive's ``code/`` is refused).
    """
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refuse(file, "a state dict",
                      ValueError(f"it is not the zip archive torch.save writes ({exc})")) from None
    total = 0
    prefixes = {info.filename.split("/", 1)[0] for info in infos}
    for info in infos:
        rest = info.filename.split("/", 1)[1] if "/" in info.filename else ""
        if len(prefixes) != 1 or not (rest in _TORCH_SAVE_MEMBERS or _DATA_MEMBER.fullmatch(rest)):
            raise _refuse(file, "a state dict", ValueError(f"it holds {printable(info.filename, 80)!r}, which "
                                                           "torch.save never writes (TorchScript code?)"))
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _refuse(file, "a state dict", ValueError(f"its member {printable(info.filename, 80)!r} is "
                                                           "compressed, which torch.save never does (a zip bomb?)"))
        total += info.file_size
    if total > limit:
        raise _refuse(file, "a state dict", ValueError(
            f"its members declare {total} bytes, over the limit of {limit} bytes; pass max_bytes= (or set "
            f"{MAX_BYTES_ENV}) if it is genuine"))
    f.seek(0)


def _read_meta(path: str) -> Dict[str, Any]:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.lexists(meta_path):
        raise FileNotFoundError(f"{path} holds no model saved by ilit-pytorch (missing {META_FILE})")
    with _open_regular(meta_path, "the metadata file", _META_MAX) as f:
        raw = f.read(_META_MAX + 1)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise _refuse(meta_path, "the metadata file", exc if not isinstance(exc, RecursionError)
                      else ValueError("it is nested too deeply")) from None
    if isinstance(meta, dict) and meta.get("format") in LEGACY_FORMATS:
        raise ModelFileError(meta_path, f"{path} holds a TorchScript program (written by an older ilit-pytorch), not "
                             "data; ilit-pytorch no longer loads programs by default because loading TorchScript runs "
                             "code from the file. Re-run tune (or quantize and save again) to get a data-only save, "
                             "or, only for a file you trust, call "
                             f"ilit_pytorch.load_torchscript_executing_code({os.path.join(path, MODEL_FILE)!r})")
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise _refuse(meta_path, "the metadata file",
                      ValueError(f"expected a JSON object whose 'format' is one of {', '.join(FORMATS)}"))
    build = meta.get("build")
    if build is not None and not (isinstance(build, dict) and isinstance(build.get("tune_cfg"), dict)
                                  and isinstance(build.get("how"), str)):
        raise _refuse(meta_path, "the metadata file", ValueError("its 'build' must be null or an object with "
                                                                 "'how' (a string) and 'tune_cfg' (an object)"))
    return meta


def _read_state(file: str, limit: int) -> Dict[str, Any]:
    with _open_regular(file, "a state dict", limit + (1 << 20)) as f:
        _check_archive(f, file, limit)
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError for a foreign global, RuntimeError, ...
            raise _refuse(file, "a state dict", exc) from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _refuse(file, "a state dict", TypeError(f"it holds a {type(state).__name__}, not a dict of tensors"))
    return state


def _signature(state: Mapping[str, Any]) -> Dict[str, Any]:
    """What must agree between the saved state and the rebuilt model: keys, and each tensor's dtype and shape."""
    def sig(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return (str(v.dtype), tuple(v.shape))
        if isinstance(v, (tuple, list)):
            return tuple(sig(x) for x in v)
        return type(v).__name__
    return {k: sig(v) for k, v in state.items()}


def load_model(path: str, model: Optional[nn.Module],
               rebuild: Callable[[Mapping[str, Any], nn.Module], nn.Module],
               max_bytes: Optional[int] = None,
               state_of: Callable[[nn.Module], nn.Module] = lambda m: m) -> nn.Module:
    """Read a directory written by :func:`save_model` into a copy of the FP32 ``model`` (required).

    ``rebuild(build, model)`` makes the quantized structure for the recorded ``build`` (without calibration, in
    eval mode);
    the saved tensors are then loaded into ``state_of(rebuilt)``, after checking that every key, dtype and
    shape agrees. Nothing from the files runs: the metadata is JSON, the tensors go through
    ``torch.load(weights_only=True)``. A file that is anything else raises :class:`ModelFileError` naming it.
    """
    meta = _read_meta(path)
    file = os.path.join(path, STATE_FILE)
    if not os.path.lexists(file):
        raise FileNotFoundError(f"{path} is incomplete: {META_FILE} is there but {STATE_FILE} is missing")
    if model is None:
        raise ValueError(f"{path} holds the tensors of a {printable(meta.get('class'), 80)}, not a program: pass "
                         "the FP32 model it was quantized from (same class and architecture), "
                         "load(path, model=fp32_model); ilit rebuilds the quantized model from it and the recorded "
                         "recipe")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the FP32 torch.nn.Module the saved model was quantized from, "
                        f"not a {type(model).__name__}")
    state = _read_state(file, load_limit(model, max_bytes))
    build = meta.get("build")
    try:
        out = copy.deepcopy(model) if build is None else rebuild(build, model)
    except ImportError:  # a backend that is not installed (torchao for PT2E): the message says what to install
        raise
    except Exception as exc:  # noqa: BLE001 - a recipe that does not fit this model (or a crafted one)
        raise_if_interrupted(exc)
        raise ModelFileError(os.path.join(path, META_FILE),
                             f"the recipe in {os.path.join(path, META_FILE)} cannot be applied to the "
                             f"{type(model).__name__} passed ({type(exc).__name__}: {printable(exc, 200)}); pass the "
                             "FP32 model this directory was quantized from") from exc
    target = state_of(out)
    want, got = _signature(target.state_dict()), _signature(state)
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise ModelFileError(file, f"{file} does not fit the {type(model).__name__} passed (missing {missing}, "
                             f"unexpected {printable(extra, 200)}, different shape or dtype {differ}); pass the FP32 "
                             "model this directory was quantized from")
    target.load_state_dict(state, strict=True)
    return out
