"""What ilit can tune in a model: its FX-traceable units, their fused graphs, and the op names.

A model FX can trace is one unit (prefix ``""``). A model it cannot trace (data-dependent control
flow, real-world transformer code) is split into the largest traceable submodules; a lone conv or
linear whose parent cannot be traced becomes a unit of its own, wrapped so it traces as a module call.
Op names are the qualified module names (``layer1.0.conv1``), or ``<module>.add`` / ``<module>.cat``
(``_1``, ``_2``, ... for the next ones) for the tensor additions and concatenations in a module's forward.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
from ilit.interrupts import raise_if_interrupted
from torch import nn
from torch.fx import GraphModule, Node

from ilit.logs import get_logger

from . import backend

__all__ = ["Op", "Unit", "Analysis", "analyze", "qualify", "get_submodule", "set_submodule", "LeafWrapper",
           "qconfig_entries", "keep_off_fast_path", "find_functional", "live_nodes"]

log = get_logger(__name__)


def qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    return root if not name else root.get_submodule(name)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(get_submodule(root, parent), last, module)


def _no_op_hook(_module: nn.Module, _args: Any) -> None:
    return None


def keep_off_fast_path(model: nn.Module) -> None:
    """Keep TransformerEncoderLayers whose linears were swapped off their fused fast path.

    That path reads ``linear1.weight`` directly, which a quantized or wrapped linear no longer has;
    any forward pre-hook on the layer makes torch take the regular path, which calls the modules.
    """
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer) and not (
                type(m.linear1) is nn.Linear and type(m.linear2) is nn.Linear):
            if _no_op_hook not in m._forward_pre_hooks.values():
                m.register_forward_pre_hook(_no_op_hook)


class LeafWrapper(nn.Module):
    """Holds one conv/linear so that FX sees a module call (and can fuse, observe and swap it)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.m(x)


@dataclass
class Op:
    """One tunable op: its reported name and type, and the node it is in its unit's fused graph."""

    name: str
    op_type: str
    node: str
    weighted: bool
    #: for add/cat: the source line FX recorded and the op's rank among same-kind ops of that line,
    #: which is how the op is found again in the converted graph (convert keeps the stack trace)
    trace: str = ""
    trace_rank: int = 0
    #: the node whose output inspect_tensor reports (an add's relu, if one follows it, as int8 fuses them)
    out: str = ""


@dataclass
class Unit:
    """A traceable part of the model, analysed on a fused copy (the model itself is never touched)."""

    prefix: str
    leaf: bool
    fused: GraphModule
    scope: Dict[str, Tuple[str, Any]]
    ops: Dict[str, Op] = field(default_factory=dict)
    #: (producer, consumer) op names: the consumer reads the producer's output, maybe through ops that
    #: are not tuned (relu, pooling, flatten, ...)
    edges: List[Tuple[str, str]] = field(default_factory=list)

    def module_in(self, root: nn.Module) -> nn.Module:
        """This unit's module inside ``root`` (a copy of the model), wrapped if it is a leaf."""
        mod = get_submodule(root, self.prefix)
        return LeafWrapper(mod) if self.leaf else mod


@dataclass
class Analysis:
    units: List[Unit]
    traceable: bool  # the whole model traced as one unit

    @property
    def ops(self) -> Dict[str, Op]:
        return {name: op for u in self.units for name, op in u.ops.items()}

    @property
    def dead(self) -> List[str]:
        """Ops whose output reaches none of their unit's outputs (a split model's unit output counts as used)."""
        out = []
        for u in self.units:
            live = live_nodes(u.fused)
            out += [name for name, op in u.ops.items() if op.node not in live]
        return out

    @property
    def edges(self) -> List[Tuple[str, str]]:
        """Producer -> consumer op pairs inside each unit (none across units of a split model)."""
        return [e for u in self.units for e in u.edges]


def _unit(prefix: str, module: nn.Module, leaf: bool, is_qat: bool) -> Unit:
    # the fused graph shares unfused leaves with the model and is only ever read; a copy is needed
    # only to switch train/eval mode (batch-norm folds in eval mode, and stays for QAT)
    work = module
    if any(m.training != is_qat for m in module.modules()):
        work = copy.deepcopy(module)
        work.train(is_qat)
    fused, scope = backend.trace_and_fuse(LeafWrapper(work) if leaf else work, is_qat)
    unit = Unit(prefix=prefix, leaf=leaf, fused=fused, scope=scope)
    modules = dict(fused.named_modules(remove_duplicate=False))
    seen: Dict[str, int] = defaultdict(int)
    traces: Dict[Tuple[str, str], int] = defaultdict(int)
    for node in fused.graph.nodes:
        if node.op == "call_module":
            op_type = backend.weighted_op_type(modules[node.target])
            if op_type is None:
                continue
            local = "" if leaf else _op_path(work, node.target)
            name = qualify(prefix, local)
            if name not in unit.ops:
                unit.ops[name] = Op(name, op_type, node.name, weighted=True, out=node.name)
        elif node.op == "call_function":
            kind = backend.functional_op_kind(node.target)
            if kind is None:
                continue
            trace = node.meta.get("stack_trace", "")
            rank = traces[(trace, kind)]  # counted as find_functional counts: every add/cat of the line
            traces[(trace, kind)] += 1
            if kind == "add" and not all(isinstance(a, Node) for a in node.args[:2]):
                continue  # adding a constant is not a tunable op
            path = scope.get(node.name, ("", None))[0]
            base = qualify(qualify(prefix, "" if leaf else path), kind)
            k = seen[base]
            seen[base] += 1
            name = base if k == 0 else f"{base}_{k}"
            unit.ops[name] = Op(name, kind, node.name, weighted=False, trace=trace, trace_rank=rank,
                                out=_through_relu(node, modules).name)
    unit.edges = _op_edges(fused, unit.ops)
    return unit


def _op_path(module: nn.Module, target: str) -> str:
    """The op name of the module at ``target``: its parent's path when the parent names it as its op
    (``ilit_op_alias``, e.g. SmoothQuant's SmoothedLinear holding the Linear as ``.m``)."""
    parent, _, last = target.rpartition(".")
    try:
        holder = get_submodule(module, parent)
    except AttributeError:
        return target
    return parent if parent and getattr(holder, "ilit_op_alias", None) == last else target


def _op_edges(gm: GraphModule, ops: Dict[str, Op]) -> List[Tuple[str, str]]:
    """(producer, consumer) pairs of ``ops``: following each op's users through nodes that are no op."""
    by_node = {op.node: op.name for op in ops.values()}
    edges: List[Tuple[str, str]] = []
    for node in gm.graph.nodes:
        producer = by_node.get(node.name)
        if producer is None:
            continue
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop(0)
            if user.name in seen:
                continue
            seen.add(user.name)
            consumer = by_node.get(user.name)
            if consumer is not None:
                if (producer, consumer) not in edges and consumer != producer:
                    edges.append((producer, consumer))
            else:
                stack.extend(user.users)
    return edges


def live_nodes(gm: GraphModule) -> Set[str]:
    """Names of the nodes of ``gm`` whose value reaches its output: an op outside this set (a pooler whose
    result the model drops) cannot change the model's outputs, so falling it back to fp32 cannot either."""
    live: Set[str] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node.name in live:
            continue
        live.add(node.name)
        stack.extend(node.all_input_nodes)
    return live


def _through_relu(node: Node, modules: Dict[str, nn.Module]) -> Node:
    """``node``, or the relu that is its only user (int8 graphs fuse add+relu into one op)."""
    if len(node.users) != 1:
        return node
    user = next(iter(node.users))
    if user.op == "call_module" and isinstance(modules.get(user.target), nn.ReLU):
        return user
    if user.op == "call_function" and user.target in (torch.relu, nn.functional.relu):
        return user
    if user.op == "call_method" and user.target == "relu":
        return user
    return node


def find_functional(gm: GraphModule, op: Op) -> Optional[str]:
    """The node of a converted (or any traced) graph that computes the add/cat ``op``, by source line and rank."""
    if not op.trace:
        return None
    rank = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.meta.get("stack_trace", "") != op.trace:
            continue
        if op.op_type in str(getattr(node.target, "__name__", node.target)) or op.op_type in str(node.target):
            if rank == op.trace_rank:
                return _through_relu(node, dict(gm.named_modules(remove_duplicate=False))).name
            rank += 1
    return None


def analyze(model: nn.Module, is_qat: bool) -> Analysis:
    """Find the units and ops of ``model``: one unit if FX traces it, else its traceable submodules."""
    try:
        return Analysis([_unit("", model, False, is_qat)], traceable=True)
    except Exception as exc:  # noqa: BLE001 - any tracer failure means "split the model"
        raise_if_interrupted(exc)  # a Ctrl-C during torch's lazy imports can surface as another error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.info("pytorch adaptor: %s is not FX-traceable as a whole (%s: %s); quantizing its traceable "
                 "submodules with FX instead", type(model).__name__, type(exc).__name__, reason[:200])
    units: List[Unit] = []
    untraced: List[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = qualify(prefix, child_name)
            if backend.weighted_op_type(child) is not None:
                units.append(_unit(name, child, True, is_qat))
                continue
            if not any(backend.weighted_op_type(m) is not None for m in child.modules()):
                continue
            try:
                unit = _unit(name, child, False, is_qat)
            except Exception as exc:  # noqa: BLE001
                raise_if_interrupted(exc)
                untraced.append(name)
                visit(child, name)
                continue
            if unit.ops:
                units.append(unit)

    visit(model, "")
    log.info("pytorch adaptor: %d traceable submodule(s) quantized with FX: %s%s", len(units),
             ", ".join(u.prefix for u in units[:8]) + (" ..." if len(units) > 8 else ""),
             f"; not traceable, split further: {', '.join(untraced[:8])}" if untraced else "")
    return Analysis(units, traceable=False)


def qconfig_entries(unit: Unit, qconfig_of: Callable[[str], Any]) -> Tuple[List[Tuple[Any, ...]], bool]:
    """The QConfigMapping entries that give each op of ``unit`` its qconfig (``qconfig_of(op_name)``).

    Ops that only pass their input's quantization on (pooling, relu, flatten, ...) follow the op that
    produces their input, so a fallback op's neighbours stay fp32 and a quantized op's stay int8.
    Node order indices are counted exactly as ``prepare_fx`` counts them on the same fused graph.
    Returns the entries and whether any op is quantized.
    """
    by_node = {op.node: op for op in unit.ops.values()}
    modules = dict(unit.fused.named_modules(remove_duplicate=False))
    counters: Dict[Tuple[str, Any], int] = defaultdict(int)
    assigned: Dict[str, Any] = {}
    entries: List[Tuple[Any, ...]] = []
    any_quantized = False
    for node in unit.fused.graph.nodes:
        key: Optional[Tuple[Any, ...]] = None
        share = False
        if node.op == "call_module":
            path, typ = unit.scope.get(node.name, (node.target, type(modules[node.target])))
            parent = path.rpartition(".")[0]
            idx = counters[(parent, typ)]
            counters[(parent, typ)] += 1
            key = ("order", parent, typ, idx)
            share = backend.shares_input_observer(type(modules[node.target]))
        elif node.op == "call_function":
            path = unit.scope.get(node.name, ("", None))[0]
            idx = counters[(path, node.target)]
            counters[(path, node.target)] += 1
            key = ("order", path, node.target, idx)
            share = backend.shares_input_observer(node.target)
        qc = None
        op = by_node.get(node.name)
        if op is not None:
            qc = qconfig_of(op.name)
            any_quantized |= qc is not None
            entries.append(("name", node.target, qc) if node.op == "call_module" else (*key, qc))  # type: ignore[misc]
        elif key is not None and share and node.args and isinstance(node.args[0], Node):
            qc = assigned.get(node.args[0].name)
            if qc is not None:
                entries.append((*key, qc))
        assigned[node.name] = qc
    return entries, any_quantized
