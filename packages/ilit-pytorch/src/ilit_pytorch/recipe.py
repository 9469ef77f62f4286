"""The recipe a quantized model was built with, as JSON data, so ``load`` can build it again from the FP32 model.

``quantize`` records on each model it returns ``{"how": <backend path>, "tune_cfg": ...}`` (plus, for PT2E, the
shapes of the example inputs and the activation scales/zero points ``convert_pt2e`` bakes into the graph as
literals). ``save`` writes it to ``ilit_model.json``; ``PyTorchAdaptor.rebuild`` reads it back. Everything here is
plain JSON: reading a recipe builds tensors of recorded shapes and sets numbers, it never runs code from a file.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .serialize import BUILD_ATTR

__all__ = ["record", "minmax_only", "input_spec", "inputs_from_spec", "graph_qparams", "set_graph_qparams",
           "feed_weight_observers", "MAX_SPEC_ELEMENTS"]

#: the most elements the example inputs rebuilt from a recorded spec may hold (zeros, for torch.export's tracing)
MAX_SPEC_ELEMENTS = 1 << 26
_MAX_SPEC_DEPTH = 16
_MAX_SPEC_LEAVES = 1024


def record(q: nn.Module, tune_cfg: Mapping[str, Any], how: str, **extra: Any) -> nn.Module:
    """``q`` with its recipe recorded (JSON data), so ``save`` writes it and ``rebuild`` can make ``q`` again."""
    build = {"how": how, "tune_cfg": copy.deepcopy(dict(tune_cfg)), **extra}
    attrs = {BUILD_ATTR: build, "_ilit_quantized": True}
    for name, value in attrs.items():
        setattr(q, name, value)
    if isinstance(q, torch.fx.GraphModule):  # GraphModule's deepcopy keeps only the attributes listed in its meta
        import torch.fx.graph_module as fx_gm
        key = getattr(fx_gm, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
        q.meta.setdefault(key, {}).update(attrs)
    return q


def minmax_only(tune_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``tune_cfg`` with every activation algorithm min/max: the same quantized structure, and observers that
    convert without data (histograms cannot); the values they give are placeholders the saved state replaces."""
    out = copy.deepcopy(dict(tune_cfg))
    for op in out["ops"].values():
        act = op.get("activation") if isinstance(op, dict) else None
        if isinstance(act, dict) and "algorithm" in act:
            act["algorithm"] = "minmax"
    return out


# ----------------------------------------------------------------------------- example inputs, as shapes only
def input_spec(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """The structure, shapes and dtypes of one call's inputs (no values): enough for ``torch.export`` to trace."""
    def enc(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return {"tensor": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        if isinstance(v, (tuple, list)):
            return {type(v).__name__: [enc(x) for x in v]}
        if isinstance(v, dict):
            return {"dict": [[str(k), enc(x)] for k, x in v.items()]}
        if v is None or isinstance(v, (bool, int, float, str)):
            return {"value": v}
        raise TypeError(f"an input of type {type(v).__name__} cannot be recorded")
    return {"args": [enc(a) for a in args], "kwargs": [[str(k), enc(v)] for k, v in kwargs.items()]}


def inputs_from_spec(spec: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """Zero tensors (and the recorded plain values) in the structure :func:`input_spec` recorded; checked,
    since the spec comes from a file: known dtypes, bounded depth, leaves and elements."""
    count = {"leaves": 0, "elements": 0}

    def dec(v: Any, depth: int) -> Any:
        if depth > _MAX_SPEC_DEPTH or not isinstance(v, dict) or len(v) not in (1, 2):
            raise ValueError("the recorded example inputs are malformed or nested too deeply")
        count["leaves"] += 1
        if count["leaves"] > _MAX_SPEC_LEAVES:
            raise ValueError(f"the recorded example inputs have more than {_MAX_SPEC_LEAVES} parts")
        if "tensor" in v:
            shape, dtype = v["tensor"], getattr(torch, str(v.get("dtype")), None)
            if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or \
                    not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
                raise ValueError(f"a recorded input tensor has shape {shape!r:.80} and dtype {v.get('dtype')!r:.40}")
            count["elements"] += math.prod(shape)
            if count["elements"] > MAX_SPEC_ELEMENTS:
                raise ValueError(f"the recorded example inputs hold over {MAX_SPEC_ELEMENTS} elements")
            return torch.zeros(shape, dtype=dtype)
        if "value" in v:
            if not (v["value"] is None or isinstance(v["value"], (bool, int, float, str))):
                raise ValueError("a recorded input value is not a number, a string or null")
            return v["value"]
        (kind, items), = v.items()
        if kind in ("tuple", "list") and isinstance(items, list):
            out = [dec(x, depth + 1) for x in items]
            return tuple(out) if kind == "tuple" else out
        if kind == "dict" and isinstance(items, list):
            return {str(k): dec(x, depth + 1) for k, x in _pairs(items)}
        raise ValueError(f"a recorded input is of unknown kind {kind!r:.40}")

    if not isinstance(spec, dict) or not isinstance(spec.get("args"), list) or not isinstance(spec.get("kwargs"), list):
        raise ValueError("the recorded example inputs are not an object with 'args' and 'kwargs' lists")
    args = tuple(dec(a, 1) for a in spec["args"])
    kwargs = {str(k): dec(v, 1) for k, v in _pairs(spec["kwargs"])}
    return args, kwargs


def _pairs(items: List[Any]) -> List[Tuple[Any, Any]]:
    if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in items):
        raise ValueError("a recorded keyword input is not a [name, value] pair")
    return [(p[0], p[1]) for p in items]


# ----------------------------------------------------------------------------- PT2E graph literals
def _per_tensor_qdq() -> Tuple[Any, ...]:
    ops = torch.ops.quantized_decomposed
    return (ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default)


def _literal_nodes(gm: torch.fx.GraphModule) -> List[torch.fx.Node]:
    targets = _per_tensor_qdq()
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets
            and len(n.args) >= 3 and isinstance(n.args[1], (int, float)) and isinstance(n.args[2], int)]


def graph_qparams(gm: torch.fx.GraphModule) -> List[List[Any]]:
    """The ``[scale, zero_point]`` literals of each per-tensor quantize/dequantize node of a converted PT2E
    graph, in graph order: ``convert_pt2e`` writes activation qparams as constants, not buffers."""
    return [[float(n.args[1]), int(n.args[2])] for n in _literal_nodes(gm)]


def set_graph_qparams(gm: torch.fx.GraphModule, qparams: Any) -> None:
    """Write recorded :func:`graph_qparams` into a graph rebuilt from the same recipe (same nodes, in order)."""
    nodes = _literal_nodes(gm)
    if not isinstance(qparams, list) or len(qparams) != len(nodes):
        got = len(qparams) if isinstance(qparams, list) else type(qparams).__name__
        raise ValueError(f"the recorded PT2E qparams ({got}) do not match the {len(nodes)} quantize/dequantize nodes "
                         "of the rebuilt graph")
    for node, pair in zip(nodes, qparams):
        ok = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, float)) and \
            not isinstance(pair[0], bool) and isinstance(pair[1], int) and not isinstance(pair[1], bool)
        if not ok or not math.isfinite(pair[0]) or pair[0] <= 0:
            raise ValueError(f"a recorded PT2E qparam is {pair!r:.60}, not [scale > 0, zero_point]")
        node.args = (node.args[0], float(pair[0]), int(pair[1]), *node.args[3:])
    gm.recompile()


def feed_weight_observers(prepared: torch.fx.GraphModule) -> None:
    """Run each observer that watches a constant (a weight) on that constant: it needs no data, and gives the
    converted graph the weight's per-channel shapes (its values are then replaced by the saved state)."""
    modules = dict(prepared.named_modules())
    for node in prepared.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if mod is None or not hasattr(mod, "calculate_qparams") or not node.args:
            continue
        src: Optional[torch.fx.Node] = node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
        if src is not None and src.op == "get_attr":
            value = prepared
            for part in str(src.target).split("."):
                value = getattr(value, part)
            with torch.no_grad():
                mod(value)
