"""bf16 fallback: which CPUs compute in bfloat16 natively, and ops converted to run in it.

On a CPU with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``) oneDNN runs bf16 Linear and conv
kernels natively, so an op that cannot stay INT8 may fall back to bf16 instead of fp32. Elsewhere
torch emulates bf16 (slower than fp32), so the capability offers it only where the ISA has it, detected
from ``/proc/cpuinfo`` as ``reduce_range`` is; ``ILIT_PYTORCH_BF16=1`` (or ``0``) forces the choice,
e.g. to build models for another CPU. A bf16 op is its module converted to bfloat16 inside
:class:`BF16Module`, which casts its input to bf16 and its output back, so the ops around it are unchanged
(FX and dynamic models); in a PT2E graph, its ``aten.linear``/``aten.conv2d`` node gets bf16 weights and the
same casts (:func:`convert_graph`).
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
           "offer_bf16", "BF16Module", "convert", "convert_graph"]

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
    """Runs ``m`` (converted to bfloat16) on a bf16 copy of its input (dequantized first if it is quantized) and
    returns the output in the input's float dtype, so the graph around it is unchanged."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_quantized:  # FX can hand a fallback op the int8 output of a producer shared with int8 ops
            x = x.dequantize()
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


_GRAPH_OPS = ("linear", "conv1d", "conv2d", "conv3d")


def convert_graph(gm: Any, names: Iterable[str]) -> List[str]:
    """Run the named fallback ops of a converted PT2E graph (``torch.fx.GraphModule``, changed in place) in bf16:
    each float ``aten.linear``/``aten.convNd`` node of those modules (found by its ``nn_module_stack``) gets its
    weight and bias as bf16 tensors, its input cast to bf16 and its output cast back to fp32. Returns the ops
    converted; one whose node is not float (quantized, or not found) stays as it is, with a warning."""
    aten = torch.ops.aten
    targets = {getattr(aten, op).default for op in _GRAPH_OPS}
    wanted = set(names)
    done: List[str] = []
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in targets or not node.meta.get("nn_module_stack"):
            continue
        path = list(node.meta["nn_module_stack"].values())[-1][0]
        if path not in wanted and path.endswith(".m") and path[:-2] in wanted:
            path = path[:-2]  # SmoothQuant's SmoothedLinear holds the op's Linear as .m (a Linear has no children)
        params = [a for a in node.args[1:3] if isinstance(a, torch.fx.Node)]
        if path not in wanted or not params or any(p.op != "get_attr" for p in params):
            continue  # a quantized op reads a dequantized weight: leave it
        for p in params:
            owner, _, leaf = p.target.rpartition(".")
            module = gm.get_submodule(owner) if owner else gm
            value = getattr(module, leaf)
            setattr(module, leaf, nn.Parameter(value.detach().to(torch.bfloat16), requires_grad=False)
                    if isinstance(value, nn.Parameter) else value.to(torch.bfloat16))
        with graph.inserting_before(node):
            cast_in = graph.call_function(aten._to_copy.default, (node.args[0],), {"dtype": torch.bfloat16})
        node.args = (cast_in, *node.args[1:])
        with graph.inserting_after(node):
            cast_out = graph.call_function(aten._to_copy.default, (node,), {"dtype": torch.float32})
        node.replace_all_uses_with(cast_out, delete_user_cb=lambda user: user is not cast_out)
        done.append(path)
    missing = [n for n in wanted if n not in done]
    if missing:
        log.warning("pytorch adaptor: bf16 op(s) %s have no float linear/conv node in the PT2E graph; they stay as "
                    "they are", ", ".join(sorted(missing)[:8]))
    graph.lint()
    gm.recompile()
    return sorted(set(done), key=done.index)
