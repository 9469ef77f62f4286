"""Reading MXNet graphs: the oneDNN-fused FP32 graph, its quantizable ops, tensor producers and consumers.

MXNet quantizes the graph after oneDNN fusion (``get_backend_symbol('MKLDNN_QUANTIZE')``), where a
conv+bn+relu becomes one ``_sg_mkldnn_conv`` node named ``sg_mkldnn_conv_bn_act_0``. ilit names every op
by its original layer name (``hybridsequential0_conv0_fwd``) and maps it to the fused node here.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq

__all__ = ["OpInfo", "FusedGraph", "MonitoredExecutor", "node_precisions", "BACKEND"]

BACKEND = "MKLDNN_QUANTIZE"
_MAIN_OPS = ("Convolution", "FullyConnected")  # the op a fused oneDNN node is named after
_WEIGHTED = ("Convolution", "FullyConnected")


@dataclass(frozen=True)
class OpInfo:
    """One quantizable op: ilit's name and type for it, and the fused-graph node that runs it."""

    name: str
    op_type: str
    node: str
    has_weight: bool
    fused: Tuple[str, ...] = ()  # the original layers fused into the node, the op itself first


def _nodes(symbol: mx.sym.Symbol) -> List[Dict[str, Any]]:
    return json.loads(symbol.tojson())["nodes"]


def _output_names(symbol: mx.sym.Symbol) -> Dict[Tuple[str, int], str]:
    """(node name, output index) -> the tensor name that monitors and calibration tables use."""
    internals = symbol.get_internals()
    out: Dict[Tuple[str, int], str] = {}
    counts: Dict[str, int] = {}
    for i, name in enumerate(internals.list_outputs()):
        node = internals[i].name
        idx = counts.get(node, 0)
        counts[node] = idx + 1
        out[(node, idx)] = name
    return out


@dataclass
class FusedGraph:
    """The FP32 graph after oneDNN fusion, with ilit's op list and the tensor map calibration needs."""

    symbol: mx.sym.Symbol
    data_names: List[str]
    ops: List[OpInfo]
    producer: Dict[str, str]                  # tensor name -> node producing it
    consumers: Dict[str, List[str]]           # tensor name -> nodes reading it
    outputs: Dict[str, List[str]] = field(default_factory=dict)  # node -> its output tensor names
    params: Tuple[str, ...] = ()

    @classmethod
    def build(cls, symbol: mx.sym.Symbol, data_names: Sequence[str], param_names: Sequence[str]) -> "FusedGraph":
        fsym = symbol.get_backend_symbol(BACKEND)
        nodes = _nodes(fsym)
        names = _output_names(fsym)
        producer: Dict[str, str] = {}
        outputs: Dict[str, List[str]] = {}
        for (node, _idx), tensor in names.items():
            producer[tensor] = node
            outputs.setdefault(node, []).append(tensor)
        consumers: Dict[str, List[str]] = {}
        for n in nodes:
            for src, idx, *_ in n.get("inputs", []):
                consumed = names.get((nodes[src]["name"], idx))
                if consumed is not None:
                    consumers.setdefault(consumed, []).append(n["name"])
        ops = _quantizable_ops(fsym, nodes, param_names)
        return cls(fsym, list(data_names), ops, producer, consumers, outputs, tuple(param_names))

    # ------------------------------------------------------------------ queries
    def op(self, name: str) -> OpInfo:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(f"no quantizable op {name!r}; the ops are {[o.name for o in self.ops]}")

    @property
    def op_nodes(self) -> Dict[str, str]:
        return {op.name: op.node for op in self.ops}

    def edges(self) -> List[Tuple[str, str]]:
        """(producer, consumer) op-name pairs: the consumer reads the producer's output, maybe through nodes
        that are no quantizable op (flatten, reshape, ...)."""
        op_of = {op.node: op.name for op in self.ops}
        out: List[Tuple[str, str]] = []
        for op in self.ops:
            stack, seen = list(self.outputs.get(op.node, [])), set()
            while stack:
                tensor = stack.pop(0)
                if tensor in seen:
                    continue
                seen.add(tensor)
                for node in self.consumers.get(tensor, []):
                    consumer = op_of.get(node)
                    if consumer is None:
                        stack.extend(self.outputs.get(node, []))
                    elif consumer != op.name and (op.name, consumer) not in out:
                        out.append((op.name, consumer))
        return out

    def activation_tensors(self) -> List[str]:
        """Every tensor calibration may need: the data inputs and every non-parameter node output."""
        params = set(self.params)
        return [t for t in self.producer if t not in params]


def _quantizable_ops(fsym: mx.sym.Symbol, nodes: List[Dict[str, Any]], param_names: Sequence[str]) -> List[OpInfo]:
    """The fused-graph nodes MXNet's quantization pass turns into INT8 ops, in execution order."""
    qsym, _args, _aux, _coll = mxq.quantize_graph(sym=fsym, arg_params=_dummy_params(fsym, param_names),
                                                  aux_params={}, ctx=mx.cpu(), calib_mode="none",
                                                  quantized_dtype="auto", quantize_mode="full")
    quantized = {n["name"][len("quantized_"):] for n in _nodes(qsym) if n["name"].startswith("quantized_")}
    ops: List[OpInfo] = []
    for n in nodes:
        if n["op"] == "null" or n["name"] not in quantized:
            continue
        inner = [m for sg in n.get("subgraphs", []) for m in sg["nodes"] if m["op"] != "null"]
        if inner:
            main = next((m for m in inner if m["op"] in _MAIN_OPS), inner[0])
            fused = tuple([main["name"]] + [m["name"] for m in inner if m is not main])
            ops.append(OpInfo(main["name"], main["op"], n["name"], main["op"] in _WEIGHTED, fused))
        else:
            ops.append(OpInfo(n["name"], n["op"], n["name"], n["op"] in _WEIGHTED, (n["name"],)))
    return ops


def _dummy_params(fsym: mx.sym.Symbol, param_names: Sequence[str]) -> Dict[str, mx.nd.NDArray]:
    # quantize_graph quantizes FC weights offline; tiny stand-ins are enough to read the graph's structure
    args = set(fsym.list_arguments())
    return {k: mx.nd.zeros((1,)) for k in param_names if k in args}


class MonitoredExecutor:
    """Runs a symbol with params on batches and hands chosen tensors to a callback (MXNet's monitor hook).

    This is the mechanism MXNet's own calibration collectors use (``set_monitor_callback``).
    """

    def __init__(self, symbol: mx.sym.Symbol, arg_params: Mapping[str, mx.nd.NDArray],
                 aux_params: Mapping[str, mx.nd.NDArray], data_names: Sequence[str],
                 type_dict: Optional[Mapping[str, Any]] = None) -> None:
        self.symbol = symbol
        self.arg_params = dict(arg_params)
        self.aux_params = dict(aux_params)
        self.data_names = list(data_names)
        self.type_dict = dict(type_dict or {})
        for n in self.data_names:
            self.type_dict.setdefault(n, np.float32)
        self._exes: Dict[Tuple[Any, ...], Any] = {}

    def _executor(self, xs: Sequence[mx.nd.NDArray]) -> Any:
        key = tuple(x.shape for x in xs)
        if key not in self._exes:
            shapes = {n: x.shape for n, x in zip(self.data_names, xs)}
            exe = self.symbol.simple_bind(mx.cpu(), grad_req="null", type_dict=self.type_dict, **shapes)
            exe.copy_params_from(self.arg_params, self.aux_params, allow_extra_params=True)
            self._exes[key] = exe
        return self._exes[key]

    def run(self, xs: Sequence[mx.nd.NDArray], callback: Callable[[str, mx.nd.NDArray], None],
            monitor_all: bool = False) -> None:
        """Forward one batch; ``callback(tensor_name, array)`` sees every op output (and input if monitor_all)."""
        exe = self._executor(xs)

        def hook(name: Any, handle: Any) -> None:
            arr = mx.nd.NDArray(ctypes.cast(handle, mx.base.NDArrayHandle), writable=False)
            callback(mx.base.py_str(name), arr)

        exe.set_monitor_callback(hook, monitor_all=monitor_all)
        exe.forward(is_train=False, **{n: x for n, x in zip(self.data_names, xs)})
        for out in exe.outputs:
            out.wait_to_read()


def node_precisions(model: Any) -> Dict[str, str]:
    """For a model returned by the MXNet adaptor: each ilit op name -> ``"int8"`` or ``"fp32"``, read from the graph.

    An op is INT8 when its node was rewritten into a ``quantized_*`` node; an excluded op keeps its FP32 node.
    """
    op_nodes = model.meta.get("op_nodes") if hasattr(model, "meta") else None
    if not op_nodes:
        raise ValueError("node_precisions needs a model quantized by ilit-mxnet (it records which node runs each op)")
    names = {n["name"]: n for n in _nodes(model.symbol)}
    out: Dict[str, str] = {}
    for op, node in op_nodes.items():
        if f"quantized_{node}" in names:
            out[op] = "int8"
        elif node in names:
            out[op] = "fp32"
        else:
            raise ValueError(f"op {op} (node {node}) is not in the graph")
    return out
