"""``MXNetAdaptor``: real INT8 for MXNet 1.9.1 through ``mxnet.contrib.quantization`` and oneDNN.

It takes a Gluon ``HybridBlock`` or a symbolic model (a :class:`SymbolModel`, a ``(symbol, arg_params,
aux_params)`` tuple, a checkpoint prefix or ``-symbol.json`` path, or a bound ``Module``) and returns an
INT8 :class:`SymbolModel`. The graph work is MXNet's own: oneDNN fusion, ``quantize_graph`` with the
fallback ops in ``excluded_sym_names``, ``calib_graph`` with a calibration table, and fusion again, as
``quantize_net_v2`` does, but with the layer statistics cached across trials.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq

from ilit import Adaptor, calibration_key
from ilit.tune_cfg import DYNAMIC, QAT, STATIC, TuneCfg, is_quantized
from ilit.batches import batch_inputs, selected_batches

from ._deps import KL_EXTRA, scipy_available
from .calibration import LayerStats, StatsCollector, thresholds
from .graph import BACKEND, FusedGraph, MonitoredExecutor, _nodes, _output_names
from .model import SymbolModel, as_nd_inputs, is_checkpoint, to_symbol_model, trace_block

__all__ = ["MXNetAdaptor"]

_GRANULARITY = {"per_tensor": "tensor-wise", "per_channel": "channel-wise"}


def quantized_dtype_for(dtype: str, scheme: str) -> str:
    """ilit's activation (dtype, scheme) as MXNet's ``quantized_dtype``.

    MXNet has no zero points: ``sym`` keeps the named dtype for every activation (``int8``, or ``uint8``,
    which MXNet refuses for tensors with negative values), and ``asym`` is MXNet's ``auto``: uint8 for
    tensors calibrated non-negative (after ReLU), int8 for the others. So ``asym`` gives the same graph
    for int8 and uint8.
    """
    if scheme == "asym":
        return "auto"
    if dtype in ("int8", "uint8"):
        return dtype
    raise ValueError(f"activation dtype {dtype!r} cannot be quantized by MXNet; use int8 or uint8")


@dataclass
class _Source:
    """A user model as the adaptor sees it: the original object, and its graph and FP32 params once known."""

    model: Any
    is_gluon: bool
    fp32: Optional[SymbolModel] = None
    graph: Optional[FusedGraph] = None
    symbol: Optional[mx.sym.Symbol] = None
    data_names: Optional[List[str]] = None


class MXNetAdaptor(Adaptor):
    """The ``mxnet`` adaptor: Gluon and symbolic models, INT8 through MXNet's oneDNN quantization."""

    name = "mxnet"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.calibration_batches = 0   # calibration batches run, counted so tests can check reuse
        self.calibration_runs = 0      # times layer statistics were collected
        self.quantize_calls = 0
        self._stats: Dict[Tuple[Any, ...], LayerStats] = {}
        self._sources: Dict[int, _Source] = {}

    # ------------------------------------------------------------------ models
    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``model`` is in a form this adaptor takes, so ``tune`` refuses anything else up front.

        True for a Gluon block, a :class:`SymbolModel`, a ``(symbol, arg_params, aux_params)`` tuple, a path
        naming checkpoint files that exist (nothing is read), and a ``Module``; False for the rest, models of
        other frameworks included. A Gluon block that is not hybridizable and an unbound Module are accepted
        as MXNet models: ``query_fw_capability`` then says precisely what to change, still before calibration.
        """
        if isinstance(model, (SymbolModel, mx.gluon.Block, mx.mod.Module)):
            return True
        if isinstance(model, (str, os.PathLike)):
            return is_checkpoint(model)
        return _is_symbol_tuple(model)

    def fp32_context(self, model: Any) -> ContextManager[Any]:
        """Predict mode for ``eval_func`` and the objective on the FP32 model, even inside the caller's
        ``autograd.train_mode()``: batch-norm uses its running statistics and dropout is off, as in the
        INT8 models."""
        return mx.autograd.predict_mode()

    @classmethod
    def reject_reason(cls, model: Any) -> Optional[str]:
        """For a path: which checkpoint files it should name, since its type alone explains nothing."""
        if isinstance(model, (str, os.PathLike)):
            return (f"{os.fspath(model)!r} names no MXNet checkpoint: expected PREFIX-symbol.json and "
                    "PREFIX-0000.params, or a directory ilit_mxnet saved")
        return None

    def _source(self, model: Any) -> _Source:
        src = self._sources.get(id(model))
        if src is not None and src.model is model:
            return src
        if isinstance(model, mx.gluon.HybridBlock) and not isinstance(model, mx.gluon.SymbolBlock):
            src = _Source(model, is_gluon=True)
        else:
            src = _Source(model, is_gluon=False, fp32=self._as_symbol_model(model))
        self._sources[id(model)] = src
        return src

    @staticmethod
    def _as_symbol_model(model: Any) -> SymbolModel:
        if isinstance(model, SymbolModel):
            return model
        if isinstance(model, mx.gluon.SymbolBlock):
            return to_symbol_model(model)
        if isinstance(model, mx.mod.Module):
            return SymbolModel.from_module(model)
        if isinstance(model, (str, os.PathLike)):  # your own checkpoint: its custom operators are yours
            return SymbolModel.load(os.fspath(model), allow_custom_ops=True)
        if _is_symbol_tuple(model):
            return SymbolModel(model[0], model[1], model[2])
        if isinstance(model, mx.gluon.Block):
            raise TypeError(f"{type(model).__name__} is a Gluon Block but not a HybridBlock: MXNet quantizes graphs, "
                            "so build the model from HybridBlocks (nn.HybridSequential, ...)")
        raise TypeError(f"the mxnet adaptor takes a Gluon HybridBlock, an ilit_mxnet.SymbolModel, a (symbol, "
                        f"arg_params, aux_params) tuple, a checkpoint prefix or -symbol.json path, or a bound "
                        f"Module; got {type(model).__module__}.{type(model).__name__}")

    def _symbol(self, src: _Source) -> Tuple[mx.sym.Symbol, List[str]]:
        if src.symbol is None:
            if src.fp32 is not None:
                src.symbol, src.data_names = src.fp32.symbol, list(src.fp32.data_names)
            else:
                src.symbol, src.data_names = trace_block(src.model)
        return src.symbol, list(src.data_names or [])

    def _graph(self, src: _Source) -> FusedGraph:
        if src.graph is None:
            symbol, names = self._symbol(src)
            free = set(names) | {a for a in symbol.list_arguments() if a.endswith("label")}
            params = [a for a in symbol.list_arguments() if a not in free] + symbol.list_auxiliary_states()
            src.graph = FusedGraph.build(symbol, names, params)
        return src.graph

    def _fp32(self, src: _Source, dataloader: Optional[Iterable[Any]]) -> SymbolModel:
        if src.fp32 is None:
            example = None
            if dataloader is not None:
                example = batch_inputs(next(iter(dataloader)))
            src.fp32 = to_symbol_model(src.model, example)
        return src.fp32

    def canonical_cfg(self, tune_cfg: TuneCfg) -> TuneCfg:
        """asym activations are MXNet's ``auto`` whatever their dtype: record them all as int8/asym, so the
        tuner runs int8/asym and uint8/asym (one graph) once."""
        ops = {}
        for name, op in tune_cfg["ops"].items():
            act = op.get("activation", {})
            if act.get("scheme") == "asym" and act.get("dtype") == "uint8":
                op = {**op, "activation": {**act, "dtype": "int8"}}
            ops[name] = op
        return {**tune_cfg, "ops": ops}

    # ------------------------------------------------------------------ capability
    def query_fw_capability(self, model: Any) -> Dict[str, Any]:
        graph = self._graph(self._source(model))
        algos = ["minmax", "kl"] if scipy_available() else ["minmax"]
        if "kl" not in algos:
            import warnings
            warnings.warn(f"scipy is not installed, so the kl calibration algorithm is not offered: {KL_EXTRA}",
                          RuntimeWarning, stacklevel=2)
        weight = {"dtype": ["int8", "fp32"], "scheme": ["sym"], "granularity": ["per_channel", "per_tensor"],
                  "algorithm": ["minmax"]}
        act = {"dtype": ["uint8", "int8", "fp32"], "scheme": ["asym", "sym"], "granularity": ["per_tensor"],
               "algorithm": algos}
        op_wise = {}
        for op in graph.ops:
            cap: Dict[str, Any] = {"activation": {k: list(v) for k, v in act.items()}}
            if op.has_weight:
                cap["weight"] = {k: list(v) for k, v in weight.items()}
            op_wise[(op.name, op.op_type)] = cap
        # who feeds whom, for fallback strategies (an outlier tensor needs its producer and consumers in fp32)
        return {"approaches": [STATIC, DYNAMIC], "op_wise": op_wise, "edges": [list(e) for e in graph.edges()]}

    # ------------------------------------------------------------------ quantization
    def quantize(self, tune_cfg: TuneCfg, model: Any, dataloader: Iterable[Any],
                 q_func: Optional[Any] = None) -> SymbolModel:
        """An INT8 :class:`SymbolModel` for ``tune_cfg``; fallback ops stay FP32 nodes in the graph."""
        approach = tune_cfg.get("approach", STATIC)
        if approach == QAT:
            raise NotImplementedError("quant_aware_training is not implemented for MXNet: MXNet 1.9 has no "
                                      "quantization-aware training API. Use post_training_static_quant (or "
                                      "post_training_dynamic_quant)")
        if approach not in (STATIC, DYNAMIC):
            raise ValueError(f"unknown approach {approach!r}")
        self.quantize_calls += 1
        src = self._source(model)
        graph = self._graph(src)
        fp32 = self._fp32(src, dataloader)
        ops_cfg = tune_cfg["ops"]
        unknown = [n for n in ops_cfg if n not in graph.op_nodes]
        if unknown:
            raise ValueError(f"tune_cfg names ops not in this model: {unknown[:5]}")
        quantized = [op for op in graph.ops if op.name in ops_cfg and is_quantized(ops_cfg[op.name])]
        excluded = [op.node for op in graph.ops if op not in quantized]
        qdtype, granularity = self._settings([ops_cfg[op.name] for op in quantized],
                                             [ops_cfg[op.name] for op in quantized if op.has_weight])
        static = approach == STATIC
        if not static and granularity == "channel-wise":
            raise ValueError("MXNet 1.9.1 crashes (segfault) running channel-wise INT8 without calibration, so "
                             "post_training_dynamic_quant takes per_tensor weights only; set "
                             "quantization.weight.granularity: per_tensor")
        qsym, qargs, auxs, collector = mxq.quantize_graph(
            sym=graph.symbol, arg_params=fp32.arg_params, aux_params=fp32.aux_params, ctx=mx.cpu(),
            excluded_sym_names=excluded, excluded_op_names=[], calib_mode="naive" if static else "none",
            quantized_dtype=qdtype, quantize_mode="full", quantize_granularity=granularity, logger=None)
        calib = "none (ranges computed at run time)"
        if static:
            needed = list(collector.include_layer or [])
            algos = self._tensor_algorithms(graph, needed, quantized, ops_cfg)
            stats = self._calibrate(tune_cfg, src, fp32, graph, dataloader, needed)
            # a precomputed calibration table, handed to MXNet through its collector interface
            table = thresholds(stats, algos, qdtype)
            int8_nodes = {op.node for op in quantized}
            negative = [t for t, (lo, _hi) in table.items()  # fed as uint8 into an INT8 op despite negatives
                        if lo < 0 and any(c in int8_nodes for c in graph.consumers.get(t, []))]
            if qdtype == "uint8" and negative:
                raise ValueError(f"activation uint8/sym makes MXNet quantize every activation as uint8, but "
                                 f"{negative[:3]} take negative values, which MXNet's uint8 kernels refuse; use "
                                 f"scheme asym (MXNet's auto: uint8 only where values are >= 0) or dtype int8")
            collector.min_max_dict = table
            qsym, qargs, auxs = mxq.calib_graph(qsym=qsym, arg_params=fp32.arg_params, aux_params=fp32.aux_params,
                                                collector=collector, calib_mode="naive", quantized_dtype=qdtype,
                                                logger=None)
            calib = "+".join(sorted(set(algos.values()))) or "none"
        qsym = qsym.get_backend_symbol(BACKEND)
        meta = {"quantized": True, "approach": approach, "quantized_dtype": qdtype, "granularity": granularity,
                "calibration": calib,
                "calibration_batches": int(tune_cfg["calibration"]["iterations"]) if static else 0,
                "op_nodes": graph.op_nodes, "fp32_ops": [op.name for op in graph.ops if op not in quantized]}
        return SymbolModel(qsym, qargs, auxs, data_names=fp32.data_names, meta=meta)

    @staticmethod
    def _settings(quantized: Sequence[Dict[str, Any]], weighted: Sequence[Dict[str, Any]]) -> Tuple[str, str]:
        """MXNet's model-wide ``quantized_dtype`` and ``quantize_granularity`` for these op configs."""
        dtypes = {quantized_dtype_for(c["activation"]["dtype"], c["activation"].get("scheme", "sym"))
                  for c in quantized}
        if len(dtypes) > 1:
            raise ValueError(f"MXNet quantizes every activation with one quantized_dtype, but this config mixes "
                             f"{sorted(dtypes)}: give all ops the same activation dtype/scheme")
        grans = set()
        for c in weighted:
            w = c.get("weight", {})
            if w.get("dtype", "int8") != "int8" or w.get("scheme", "sym") != "sym":
                raise ValueError(f"MXNet quantizes weights to symmetric int8 only, got {w}")
            grans.add(_GRANULARITY[w.get("granularity", "per_tensor")])
        if len(grans) > 1:
            raise ValueError("MXNet applies one weight granularity to the whole model, but this config mixes "
                             "per_channel and per_tensor: give all ops the same weight granularity")
        return (dtypes.pop() if dtypes else "auto"), (grans.pop() if grans else "tensor-wise")

    @staticmethod
    def _tensor_algorithms(graph: FusedGraph, tensors: Sequence[str], quantized: Sequence[Any],
                           ops_cfg: Dict[str, Any]) -> Dict[str, str]:
        """Each calibrated tensor's algorithm: its producer op's if that op is INT8, else its first INT8 consumer's."""
        node_algo = {op.node: ops_cfg[op.name]["activation"].get("algorithm", "minmax") for op in quantized}
        out: Dict[str, str] = {}
        for t in tensors:
            algo = node_algo.get(graph.producer.get(t, ""))
            if algo is None:
                algo = next((node_algo[c] for c in graph.consumers.get(t, []) if c in node_algo), "minmax")
            out[t] = algo
        return out

    def _calibrate(self, tune_cfg: TuneCfg, src: _Source, fp32: SymbolModel, graph: FusedGraph,
                   dataloader: Iterable[Any], needed: Sequence[str]) -> LayerStats:
        """Layer statistics for this calibration setting, collected once per ``calibration_key`` and reused."""
        key = (id(src.model),) + calibration_key(tune_cfg)
        cached = self._stats.get(key)
        if cached is not None and all(t in cached.min_max for t in needed):
            return cached
        with_hist = "kl" in key[-1]
        if with_hist:
            from ._deps import require_scipy

            require_scipy()
        collector = StatsCollector(set(graph.activation_tensors()) | set(needed), histograms=with_hist)
        exe = MonitoredExecutor(graph.symbol, fp32.arg_params, fp32.aux_params, fp32.data_names, fp32.type_dict())
        iterations = int(tune_cfg["calibration"]["iterations"])
        for i, batch in enumerate(dataloader):
            if i >= iterations:
                break
            exe.run(as_nd_inputs(batch_inputs(batch)), collector.collect, monitor_all=True)
            collector.stats.batches += 1
            self.calibration_batches += 1
        if collector.stats.batches == 0:
            raise ValueError("the calibration dataloader yielded no batch")
        missing = [t for t in needed if t not in collector.stats.min_max]
        if missing:
            raise RuntimeError(f"calibration saw no values for {missing[:5]}; the graph's monitor did not report them")
        self.calibration_runs += 1
        self._stats[key] = collector.stats
        return collector.stats

    # ------------------------------------------------------------------ running models
    def _runner(self, model: Any) -> Any:
        if isinstance(model, (SymbolModel, mx.gluon.Block)):
            return model
        return self._source(model).fp32

    def infer(self, model: Any, inputs: Any) -> Any:
        """One forward pass in inference mode, waited on (MXNet runs asynchronously, and latency must include it).

        Inference mode even inside the caller's ``autograd.train_mode()``/``record()``: in train mode BatchNorm
        would normalize with batch statistics and Dropout drop units (a wrong baseline), and INT8 pooling fails.
        """
        with mx.autograd.predict_mode():
            out = self._runner(model)(*as_nd_inputs(inputs))
        for o in out if isinstance(out, (list, tuple)) else [out]:
            o.wait_to_read()
        return out

    def inspect_tensor(self, model: Any, dataloader: Iterable[Any], op_list: Sequence[str],
                       iteration_list: Sequence[int]) -> Dict[str, List[np.ndarray]]:
        """Each op's output for the chosen batches, read through MXNet's executor monitor.

        FP32 models run their oneDNN-fused graph, so an op's output is the fused node's (conv+bn+relu), the
        same tensor the INT8 graph produces; INT8 outputs are dequantized with their ranges.
        """
        if isinstance(model, SymbolModel) and model.meta.get("op_nodes"):
            sm = model
            symbol, op_nodes = sm.symbol, dict(model.meta["op_nodes"])
            args, auxs, names, types = sm.arg_params, sm.aux_params, sm.data_names, sm.type_dict()
        else:
            src = self._source(model)
            graph = self._graph(src)
            fp32 = self._fp32(src, dataloader)
            symbol, op_nodes = graph.symbol, graph.op_nodes
            args, auxs, names, types = fp32.arg_params, fp32.aux_params, fp32.data_names, fp32.type_dict()
        unknown = [op for op in op_list if op not in op_nodes]
        if unknown:
            raise ValueError(f"no quantizable op named {unknown[:5]}; the ops are {list(op_nodes)}")
        node_names = {n["name"] for n in _nodes(symbol)}
        outs = _output_names(symbol)
        targets: Dict[str, List[str]] = {}
        for op in op_list:
            node = op_nodes[op]
            chosen = next(c for c in (f"requantize_{node}", f"quantized_{node}", node, None)
                          if c is None or c in node_names)
            if chosen is None:
                raise ValueError(f"op {op} (node {node}) is not in the model's graph")
            n_out = 3 if chosen != node else 1
            targets[op] = [outs[(chosen, i)] for i in range(n_out) if (chosen, i) in outs]
        wanted = {t for ts in targets.values() for t in ts}
        result: Dict[str, List[np.ndarray]] = {op: [] for op in op_list}
        exe = MonitoredExecutor(symbol, args, auxs, names, types)
        for _, batch in selected_batches(dataloader, iteration_list):
            seen: Dict[str, mx.nd.NDArray] = {}
            exe.run(as_nd_inputs(batch_inputs(batch)),
                    lambda name, arr: seen.__setitem__(name, arr.copyto(mx.cpu())) if name in wanted else None)
            for op, ts in targets.items():
                result[op].append(_dequantized([seen[t] for t in ts if t in seen]))
        return result

    # ------------------------------------------------------------------ persistence
    def save(self, model: Any, path: str) -> None:
        """Export symbol and params (``model-symbol.json``, ``model-0000.params``) into the directory ``path``."""
        sm = model if isinstance(model, SymbolModel) else self._fp32(self._source(model), None)
        sm.save_dir(path)

    def load(self, path: str, model: Any = None) -> SymbolModel:
        """Read what :meth:`save` wrote; symbol and params hold the whole model, so ``model`` is not needed."""
        return SymbolModel.load(path)

    def fingerprint(self, model: Any) -> str:
        """A hash of the graph and parameter values (shapes only for not yet initialized Gluon params)."""
        src = self._source(model)
        symbol, _names = self._symbol(src)
        # the graph without the per-trace version numbers MXNet puts on aux-state inputs
        graph = [(n["op"], n["name"], sorted(n.get("attrs", {}).items()), [i[:2] for i in n.get("inputs", [])])
                 for n in _nodes(symbol)]
        h = hashlib.sha256(json.dumps(graph).encode())
        if src.fp32 is not None:
            values = src.fp32.params
        else:
            values = {}
            for name, p in src.model.collect_params().items():
                try:
                    values[name] = p.data()
                except (RuntimeError, mx.gluon.parameter.DeferredInitializationError):
                    h.update(f"{name}:uninitialized".encode())
        for name in sorted(values):
            h.update(name.encode())
            h.update(values[name].asnumpy().tobytes())
        return h.hexdigest()


def _is_symbol_tuple(model: Any) -> bool:
    """``(symbol, arg_params, aux_params)``: a Symbol, a dict of NDArrays, and a dict of NDArrays (or None)."""
    if not (isinstance(model, (tuple, list)) and len(model) == 3 and isinstance(model[0], mx.sym.Symbol)):
        return False
    args, auxs = model[1], model[2] if model[2] is not None else {}
    return all(isinstance(d, Mapping) and all(isinstance(k, str) and isinstance(v, mx.nd.NDArray)
                                              for k, v in d.items()) for d in (args, auxs))


def _dequantized(arrays: Sequence[mx.nd.NDArray]) -> np.ndarray:
    if not arrays:
        raise RuntimeError("the monitor reported no output for an inspected op")
    data = arrays[0]
    if len(arrays) == 3 and data.dtype in (np.int8, np.uint8, np.int32):
        data = mx.nd.contrib.dequantize(data, arrays[1], arrays[2], out_type="float32")
    return data.asnumpy()
