"""bf16 fallback: which CPUs compute in bfloat16 natively, and ops converted to run in it.

On a CPU with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) oneDNN runs bf16 Linear and conv
kernels natively, so an op that cannot stay INT8 may fall back to bf16 instead of fp32. Elsewhere
torch emulates bf16 (slower than fp32), so the capability offers it only where the ISA has it, detected
from ``/proc/cpuinfo`` as ``reduce_range`` is; ``ILIT_PYTORCH_BF16=1`` (or ``0``) forces the choice,
e.g. to build models for another CPU. A bf16 op is its module converted to bfloat16 inside
:class:`BF16Module`, which casts its input to bf16 and its output back, so the ops around it are unchanged.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Iterable, List, Mapping, Set, Tuple

import torch
from torch import nn

from ilit.logs import get_logger

from . import backend

__all__ = ["BF16_FLAGS", "ENV", "cpu_flags", "isa_has_bf16", "cpu_has_bf16", "bf16_enabled", "offers_bf16",
           "offer_bf16", "BF16Module", "convert"]

log = get_logger(__name__)

#: /proc/cpuinfo flags of native bf16 dot products (AMX tiles, or AVX-512 VDPBF16PS)
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
ENV = "ILIT_PYTORCH_BF16"


def cpu_flags(cpuinfo: str) -> Set[str]:
    """The flags of the first CPU listed in a ``/proc/cpuinfo`` text (empty when it has no flags line)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def isa_has_bf16(cpuinfo: str) -> bool:
    """Whether a ``/proc/cpuinfo`` text shows native bf16 (``amx_bf16`` or ``avx512_bf16``)."""
    return bool(cpu_flags(cpuinfo) & BF16_FLAGS)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this machine's CPU computes in bf16 natively (False when ``/proc/cpuinfo`` cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return isa_has_bf16(f.read())
    except OSError:
        return False


def bf16_enabled() -> bool:
    """Whether the capability offers bf16 fallback: the CPU has it, or ``ILIT_PYTORCH_BF16=1`` forces it
    (``0`` turns it off)."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{ENV}={forced!r}: use 1 (offer bf16 fallback), 0 (never) or leave it unset (detect)")
    return cpu_has_bf16()


def offers_bf16(op_type: str) -> bool:
    """Whether an op of this reported type can run in bf16 here: Linear and conv modules, fused or not
    (embeddings, LSTM/GRU and add/cat stay int8 or fp32)."""
    return op_type.startswith(("Linear", "Conv"))


def offer_bf16(ops: Mapping[Tuple[str, str], Dict[str, Any]]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """The op-wise capability with ``bf16`` added before ``fp32`` to the weight and activation dtypes of the
    ops :func:`offers_bf16` accepts (new dicts; the others unchanged)."""
    out: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for key, cap in ops.items():
        if not offers_bf16(key[1]) or "weight" not in cap:
            out[key] = cap
            continue
        new = {}
        for part, tensor in cap.items():
            dtypes = list(tensor.get("dtype", []))
            if "fp32" in dtypes and "bf16" not in dtypes:
                dtypes.insert(dtypes.index("fp32"), "bf16")
            new[part] = {**tensor, "dtype": dtypes}
        out[key] = new
    return out


class BF16Module(nn.Module):
    """Runs ``m`` (converted to bfloat16) on a bf16 copy of its float input and returns the output in the
    input's dtype, so the graph around it is unchanged."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x.to(torch.bfloat16)).to(x.dtype)


def _target(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    """The module that holds op ``name`` in a quantized model, and its path (a leaf unit wraps it as ``.m``)."""
    modules = dict(model.named_modules())
    for path in (name, f"{name}.m"):
        module = modules.get(path)
        if module is not None and backend.weighted_op_type(module) is not None:  # float Linear/conv (fused or not)
            return module, path
    raise LookupError(name)


def convert(model: nn.Module, names: Iterable[str]) -> List[str]:
    """Put the named fallback ops of ``model`` (a quantized copy, changed in place) in :class:`BF16Module`;
    returns the ops converted. An op not found as a float module with a weight stays fp32, with a warning."""
    done: List[str] = []
    for name in names:
        try:
            module, path = _target(model, name)
        except LookupError:
            log.warning("pytorch adaptor: bf16 op %s is not a float module of the quantized model; it stays fp32",
                        name)
            continue
        parent, _, last = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, last, BF16Module(module))
        done.append(name)
    return done
