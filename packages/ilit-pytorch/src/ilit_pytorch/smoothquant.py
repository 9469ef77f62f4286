"""SmoothQuant: move activation outliers of Linear inputs into the weights, before static INT8.

Transformers have a few activation channels (mostly LayerNorm outputs) 10-100x larger than the rest;
one per-tensor INT8 scale cannot hold them. For a Linear ``y = x W^T`` a per-input-channel scale
``s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha)`` gives the same ``y = (x / s) (W s)^T`` with ``x / s``
much flatter (Xiao et al., 2022). ``1/s`` is folded into the op producing ``x`` -- a LayerNorm
(weight and bias) or a Linear (its output rows) -- when that op's output reaches only Linears (through
dropout/identity), so the migrated model is the same FP32 function with no extra op.

Where a LayerNorm's output also reaches something else (a post-LN BERT block: the LayerNorm feeds the
next block's Linears and its residual add), nothing can absorb ``1/s``: each Linear reading it is
wrapped in :class:`SmoothedLinear`, which multiplies the input by ``1/s`` (:class:`InputScale`, an FP32
mul that runs before the Linear's quantize) and holds the Linear, weight times ``s``, as ``.m``. The op
keeps the Linear's name. The scales are buffers, so they are in the state dict a saved model keeps.
Linears reading anything else (a residual sum, an activation, an attention context) are not smoothed.

The recipe is recorded in the tune_cfg as ``{"recipes": {"smooth_quant": {"alpha": 0.5}}}``
(see ``ilit.tune_cfg``); a tune_cfg without ``recipes`` means no recipe.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.fx import Node

from ilit.logs import get_logger

from .calibration import batch_inputs, call_model
from .graph import Analysis, get_submodule, qualify, set_submodule
from .modes import restored_modes

__all__ = ["RECIPE", "ALPHAS", "Group", "InputScale", "SmoothedLinear", "find_groups", "smooth", "alpha_of",
           "input_absmax", "offered"]

log = get_logger(__name__)

RECIPE = "smooth_quant"
#: the alphas offered in the capability (0.5 is the paper's default; 0.75 migrates more, for larger outliers)
ALPHAS = (0.5, 0.75)
_PASSTHROUGH = (nn.Dropout, nn.Identity)


@dataclass
class Group:
    """Linears reading one producer's output, and that producer (a LayerNorm or a Linear): migrated together."""

    producer: str
    kind: str  # "layernorm" or "linear" (1/s folded into it), or "explicit" (an InputScale before each Linear)
    linears: List[str]


class InputScale(nn.Module):
    """Multiplies its input by a per-channel ``scale`` (SmoothQuant's ``1/s``) where no op can absorb it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SmoothedLinear(nn.Module):
    """A Linear (``m``, weight multiplied by ``s``) reading its input through an :class:`InputScale` (``1/s``):
    the same FP32 function; the quantized Linear sees the smoothed input. ilit names the op as the Linear."""

    #: the child that is the op: the analysis reports ``<this module>.m`` under this module's own name
    ilit_op_alias = "m"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.scale = InputScale(linear.in_features)
        self.m = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(self.scale(x))


def offered(groups: Sequence[Group]) -> bool:
    """Whether SmoothQuant has anything to do: a LayerNorm feeds Linears (folded or with explicit scales)."""
    return any(g.kind in ("layernorm", "explicit") for g in groups)


def alpha_of(tune_cfg: Mapping[str, Any]) -> Optional[float]:
    """The SmoothQuant alpha a tune_cfg asks for, or None (no ``recipes`` entry: no recipe)."""
    recipe = (tune_cfg.get("recipes") or {}).get(RECIPE)
    return None if not recipe else float(recipe["alpha"])


def _plain_linear(module: nn.Module) -> Optional[nn.Linear]:
    """The nn.Linear of a (possibly fused Linear+ReLU) module whose weight the graph calls as a module."""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None
    if isinstance(module, nn.Sequential) and len(module) and type(module[0]) is nn.Linear:
        return module[0]
    return module if type(module) is nn.Linear else None


def _reads_alone(user: Node, node: Node, mod: Optional[nn.Module]) -> bool:
    """Whether ``user`` is a call of a (plain) Linear whose only argument is ``node``'s output."""
    return mod is not None and _plain_linear(mod) is not None and len(user.args) == 1 and user.args[0] is node \
        and not user.kwargs


def _consumers(node: Node, modules: Mapping[str, nn.Module]) -> Optional[List[Node]]:
    """The Linear nodes ``node``'s output reaches (through dropout/identity), or None if it reaches anything else."""
    out: List[Node] = []
    for user in node.users:
        mod = modules.get(user.target) if user.op == "call_module" else None
        if _reads_alone(user, node, mod):
            out.append(user)
        elif mod is not None and isinstance(mod, _PASSTHROUGH):
            more = _consumers(user, modules)
            if more is None:
                return None
            out += more
        else:
            return None
    return out


def _linear_readers(node: Node, modules: Mapping[str, nn.Module]) -> List[Node]:
    """The Linear nodes reading ``node``'s output as their only argument (through dropout/identity); other
    users are ignored."""
    out: List[Node] = []
    for user in node.users:
        mod = modules.get(user.target) if user.op == "call_module" else None
        if _reads_alone(user, node, mod):
            out.append(user)
        elif mod is not None and isinstance(mod, _PASSTHROUGH):
            out += _linear_readers(user, modules)
    return out


def _same_linear(fused: Optional[nn.Linear], model: nn.Module, name: str) -> bool:
    """Whether the fused graph's Linear is the model's own at ``name`` (not a copy with a batch-norm folded in)."""
    try:
        mine = model.get_submodule(name)
    except AttributeError:
        return False
    return fused is not None and type(mine) is nn.Linear and torch.equal(fused.weight, mine.weight)


def find_groups(model: nn.Module, analysis: Analysis) -> List[Group]:
    """Every LayerNorm/Linear of ``model`` whose output only feeds Linears, with those Linears (model-level names),
    then every LayerNorm whose output feeds Linears and something else (``explicit``: nothing absorbs 1/s)."""
    groups: List[Group] = []
    explicit: List[Group] = []
    for unit in analysis.units:
        if unit.leaf:
            continue
        modules = dict(unit.fused.named_modules(remove_duplicate=False))
        for node in unit.fused.graph.nodes:
            if node.op != "call_module":
                continue
            mod = modules[node.target]
            name = qualify(unit.prefix, node.target)
            if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1:
                kind = "layernorm"
            elif _same_linear(_plain_linear(mod), model, name):  # relu(z) / s == relu(z / s): LinearReLU folds too
                kind = "linear"
            else:
                continue
            users = _consumers(node, modules)
            if users is None and kind == "layernorm":
                users = _linear_readers(node, modules)
                kind = "explicit"
            if not users:
                continue
            names = [qualify(unit.prefix, u.target) for u in users]
            if all(_same_linear(_plain_linear(modules[u.target]), model, n) or
                   type(model.get_submodule(n)) is nn.Linear for u, n in zip(users, names)):
                (explicit if kind == "explicit" else groups).append(Group(name, kind, names))
    folded = {n for g in groups for n in g.linears}  # a Linear is migrated once: folding wins
    for g in explicit:
        names = [n for n in g.linears if n not in folded]
        if names:
            groups.append(Group(g.producer, g.kind, names))
            folded |= set(names)
    return groups


def input_absmax(model: nn.Module, names: Sequence[str], dataloader: Iterable[Any],
                 iterations: int) -> "tuple[Dict[str, torch.Tensor], int]":
    """The per-input-channel max |x| of each named Linear over ``iterations`` batches (the FP32 model, eval
    mode), and the number of batches run."""
    stats: Dict[str, torch.Tensor] = {}
    handles = []
    ran = 0
    for name in names:
        def hook(_m: nn.Module, args: Any, name: str = name) -> None:
            x = args[0].detach()
            cur = x.abs().reshape(-1, x.shape[-1]).amax(0)
            stats[name] = cur if name not in stats else torch.maximum(stats[name], cur)
        handles.append(get_submodule(model, name).register_forward_pre_hook(hook))
    try:
        with restored_modes(model), torch.no_grad():
            for i, batch in enumerate(dataloader):
                if i >= iterations:
                    break
                call_model(model, batch_inputs(batch))
                ran += 1
    finally:
        for h in handles:
            h.remove()
    return stats, ran


def smooth(model: nn.Module, groups: Sequence[Group], absmax: Mapping[str, torch.Tensor], alpha: float) -> nn.Module:
    """A copy of ``model`` with each group migrated at ``alpha``; the same FP32 function up to rounding."""
    out = copy.deepcopy(model)
    done = 0
    for g in groups:
        linears = [_plain_linear(get_submodule(out, n)) for n in g.linears]
        xs = [absmax[n] for n in g.linears if n in absmax]
        if not xs or any(lin is None for lin in linears):
            continue
        x_max = torch.stack(xs).amax(0).float()
        w_max = torch.stack([lin.weight.detach().abs().amax(0) for lin in linears]).amax(0).float()  # type: ignore[union-attr]
        s = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        s = torch.where((x_max > 0) & (w_max > 0), s, torch.ones_like(s))
        producer = get_submodule(out, g.producer)
        with torch.no_grad():
            for lin in linears:
                lin.weight.mul_(s.to(lin.weight.dtype))  # type: ignore[union-attr]
            if g.kind == "explicit":
                for name, lin in zip(g.linears, linears):
                    wrapped = SmoothedLinear(lin)  # type: ignore[arg-type]
                    wrapped.scale.scale.copy_(1 / s)
                    set_submodule(out, name, wrapped)
            elif g.kind == "layernorm":
                if producer.weight is None:  # no affine parameters: give it some (1 / s, 0)
                    producer.weight = nn.Parameter(torch.ones_like(s))
                    producer.bias = nn.Parameter(torch.zeros_like(s))
                    producer.elementwise_affine = True
                producer.weight.div_(s)
                if producer.bias is not None:
                    producer.bias.div_(s)
            else:
                prod = _plain_linear(producer)
                prod.weight.div_(s.unsqueeze(1))  # type: ignore[union-attr]
                if prod.bias is not None:  # type: ignore[union-attr]
                    prod.bias.div_(s)  # type: ignore[union-attr]
        done += len(linears)
    log.info("pytorch adaptor: SmoothQuant alpha %.2f migrated %d Linear input(s) in %d group(s)",
             alpha, done, len(groups))
    return out
