"""The ``tensorflow`` adaptor: real INT8 TFLite models from the TFLite converter, run with the LiteRT interpreter."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from ilit import Adaptor, calibration_key, is_quantized
from ilit.tune_cfg import DYNAMIC, QAT, STATIC, TuneCfg
from ilit.logs import get_logger
from ilit.batches import batch_inputs, selected_batches

from . import flatbuffer as fb
from ._deps import tf
from .model import TFLiteModel
from .ranges import ALGORITHMS, compute_range, subsample
from .sources import KerasSource, Source, as_float_arrays, keras_layers, make_source, model_kind

__all__ = ["TensorFlowAdaptor", "QAT_MESSAGE", "run_converter"]

log = get_logger(__name__)

QAT_MESSAGE = ("quant_aware_training is not implemented by the TensorFlow adaptor: TensorFlow 2.21's tf.keras is "
               "Keras 3, which tensorflow-model-optimization (the QAT toolkit) does not support. Use "
               "post_training_static_quant (full INT8 with a calibration set) or post_training_dynamic_quant "
               "(INT8 weights, activations quantized at run time) instead.")


@dataclass
class _Prepared:
    """One FP32 model converted to float TFLite once, with its quantizable ops named."""

    model: Any                      # kept so the id() key stays valid
    source: Source
    float_content: bytes
    float_ops: List[fb.OpInfo]
    names: Dict[str, fb.OpInfo]     # ilit op name -> float-model op, in execution order


def _strip_suffix(comp: str, layers: Optional[Set[str]]) -> str:
    """Undo TF's scope uniquification: Keras 3 enters each layer scope twice, so layer ``conv`` shows as ``conv_1``."""
    m = re.fullmatch(r"(.+)_\d+", comp)
    if not m or (layers is not None and m.group(1) not in layers):
        return comp
    return m.group(1)


def _scope_name(tensor_names: Sequence[str], layers: Optional[Set[str]]) -> str:
    """The layer path in an op's tensor names, e.g. ``conv`` for ``functional_1/conv_1/Relu;...``."""
    for full in tensor_names:
        for part in full.split(";"):
            comps = [c for c in part.split("/") if c]
            if len(comps) >= 2:
                scope = comps[:-1]
                if len(scope) >= 2:
                    scope = scope[1:]  # drop the model's root scope
                return "/".join(_strip_suffix(c, layers) for c in scope)
    return ""


def name_ops(float_content: bytes, float_ops: Sequence[fb.OpInfo], types: Sequence[str],
             layers: Optional[Set[str]] = None) -> Dict[str, fb.OpInfo]:
    """Stable ilit names for the ops of the given types: their layer path, else ``<type>_<k>``; made unique.

    ``layers`` (a Keras model's layer names) guards the suffix stripping; without it every
    ``_<n>`` scope suffix is stripped, which gives a Keras model's exported SavedModel the same names.
    """
    m = fb.read(float_content)
    tensors = m.subgraphs[0].tensors
    names: Dict[str, fb.OpInfo] = {}
    counts: Dict[str, int] = {}
    for op in float_ops:
        if op.type not in types:
            continue
        cands = list(op.output_names) + [tensors[t].name.decode() for t, c in zip(op.inputs, op.const_inputs) if c]
        base = _scope_name(cands, layers) or f"{op.type.lower()}_{counts.get(op.type, 0)}"
        counts[op.type] = counts.get(op.type, 0) + 1
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names[name] = op
    return names


class TensorFlowAdaptor(Adaptor):
    """ilit's TensorFlow adaptor.

    Static quantization converts with the TFLite converter in calibrate-only mode once per
    calibration setting, writes the kl/percentile ranges into that calibrated model, then quantizes
    it with the MLIR quantizer, whose ``denylisted_nodes`` keep fallback ops in float. Dynamic-range
    quantization converts with ``Optimize.DEFAULT`` and no calibration set, and puts the float
    weights back into fallback ops. Both return a :class:`TFLiteModel` run by the LiteRT interpreter.
    """

    name = "tensorflow"

    def __init__(self, config: Any, num_threads: Optional[int] = None) -> None:
        super().__init__(config)
        self.num_threads = num_threads
        self.calibration_batches = 0   # q_dataloader batches run for calibration (tests check reuse with it)
        self.float_conversions = 0
        self._prepared: Dict[int, _Prepared] = {}
        self._calibrated: Dict[Tuple[int], bytes] = {}
        self._samples: Dict[Tuple[int], Dict[int, List[np.ndarray]]] = {}
        self._stats: Dict[Tuple[Any, ...], bytes] = {}
        self._dynamic: Dict[Tuple[bool, bool], bytes] = {}

    # ------------------------------------------------------------------ model handling
    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``tune`` can take ``model``: a Keras 3 model, a SavedModel directory or a ``tf.function`` with
        an ``input_signature``. Anything else is False (a torch or MXNet model without importing either, a
        path that is not a SavedModel, an already converted :class:`TFLiteModel`), so ``Tuner.tune`` refuses
        it before any calibration."""
        return model_kind(model) is not None

    @classmethod
    def reject_reason(cls, model: Any) -> Optional[str]:
        """What to pass instead, for the near misses: a path, a converted model, a tf.function without signature."""
        if isinstance(model, (str, os.PathLike)):
            return f"{os.fspath(model)!r} is not a SavedModel directory (no saved_model.pb in it)"
        if isinstance(model, TFLiteModel):
            return "it is already a converted TFLite model; pass the FP32 Keras model, SavedModel or tf.function"
        if type(model).__name__ in ("PolymorphicFunction", "Function") and getattr(model, "input_signature", 0) is None:
            return "a tf.function needs an input_signature, e.g. @tf.function(input_signature=[tf.TensorSpec(...)])"
        return None

    def _prepare(self, model: Any) -> _Prepared:
        if isinstance(model, TFLiteModel):
            raise TypeError("this is already a converted TFLite model; pass the FP32 Keras model, SavedModel "
                            "directory or tf.function to quantize or query")
        key = id(model)
        prep = self._prepared.get(key)
        if prep is None:
            fw = self.config.framework
            source = make_source(model, fw.inputs, fw.outputs)
            content = run_converter(source.converter(), source)
            self.float_conversions += 1
            ops = fb.op_list(content)
            layers = {la.name for la in keras_layers(source.model)} if isinstance(source, KerasSource) else None
            names = name_ops(content, ops, fb.STATIC_OPS, layers)
            prep = _Prepared(model, source, content, ops, names)
            self._prepared[key] = prep
        return prep

    def _check_approach(self, approach: str) -> None:
        if approach == QAT:
            raise NotImplementedError(QAT_MESSAGE)
        if approach not in (STATIC, DYNAMIC):
            raise ValueError(f"unknown approach {approach!r}; expected {STATIC} or {DYNAMIC}")

    # ------------------------------------------------------------------ capability
    def query_fw_capability(self, model: Any) -> Dict[str, Any]:
        approach = self.config.quantization.approach
        self._check_approach(approach)
        prep = self._prepare(model)
        op_wise: Dict[Tuple[str, str], Dict[str, Any]] = {}
        if approach == STATIC:
            for name, op in prep.names.items():
                cap: Dict[str, Any] = {"activation": {"dtype": ["int8", "fp32"], "scheme": ["asym"],
                                                      "granularity": ["per_tensor"], "algorithm": list(ALGORITHMS)}}
                if op.type in fb.WEIGHT_OPS and op.weight_type == "FLOAT32":
                    cap["weight"] = {"dtype": ["int8", "fp32"], "scheme": ["sym"],
                                     "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]}
                op_wise[(name, op.type)] = cap
        else:
            dyn_ops = fb.op_list(self._dynamic_model(prep, False, False))
            for name, op in prep.names.items():
                if op.type not in fb.WEIGHT_OPS or dyn_ops[op.index].weight_type != "INT8":
                    continue  # the converter keeps small weights (< 1024 elements) in float
                op_wise[(name, op.type)] = {
                    "weight": {"dtype": ["int8", "fp32"], "scheme": ["sym"],
                               "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]},
                    "activation": {"dtype": ["int8", "fp32"], "scheme": ["asym"],
                                   "granularity": ["per_tensor"], "algorithm": ["minmax"]}}
        named = {op.index: name for name, op in prep.names.items() if (name, op.type) in op_wise}
        # who feeds whom, for fallback strategies (an outlier tensor needs its producer and consumers in fp32)
        edges = [list(e) for e in fb.op_edges(prep.float_ops, named)]
        return {"approaches": [STATIC, DYNAMIC], "op_wise": op_wise, "edges": edges}

    # ------------------------------------------------------------------ quantization
    def quantize(self, tune_cfg: TuneCfg, model: Any, dataloader: Iterable[Any],
                 q_func: Optional[Callable[[Any], Any]] = None) -> TFLiteModel:
        approach = tune_cfg["approach"]
        self._check_approach(approach)
        prep = self._prepare(model)
        unknown = [n for n in tune_cfg["ops"] if n not in prep.names]
        if unknown:
            raise ValueError(f"tune_cfg names ops {unknown} that this model does not have; "
                             f"its ops are {list(prep.names)}")
        disable_pc, disable_dense_pc = _granularity_flags(tune_cfg, prep)
        fallback = [n for n, op in tune_cfg["ops"].items() if not is_quantized(op)]
        if approach == STATIC:
            calibrated = self._calibrated_model(tune_cfg, prep, dataloader)
            cal_ops = fb.op_list(calibrated)
            to_cal = fb.match_ops(prep.float_ops, cal_ops)
            deny = [cal_ops[to_cal[prep.names[n].index]].output_names[0] for n in fallback]
            content = _mlir_quantize(calibrated, disable_pc, disable_dense_pc, deny)
        else:
            dyn = self._dynamic_model(prep, disable_pc, disable_dense_pc)
            to_dyn = fb.match_ops(prep.float_ops, fb.op_list(dyn))
            op_map = {to_dyn[prep.names[n].index]: prep.names[n].index for n in fallback}
            content = fb.restore_float_weights(dyn, prep.float_content, op_map) if op_map else dyn
        to_q = fb.match_ops(prep.float_ops, fb.op_list(content))
        q = TFLiteModel(content, {n: to_q[op.index] for n, op in prep.names.items()}, tune_cfg=tune_cfg,
                        num_threads=self.num_threads, input_names=prep.source.input_names())
        still_int = [n for n in fallback if not q.op(n).is_float]
        if still_int:
            raise RuntimeError(f"the converter did not keep {still_int} in float as the tune_cfg asks")
        return q

    def _representative(self, dataloader: Iterable[Any], iterations: int,
                        names: Optional[List[str]]) -> Callable[[], Iterable[Any]]:
        def gen() -> Iterable[Any]:
            for batch in itertools.islice(iter(dataloader), iterations):
                self.calibration_batches += 1
                arrays = as_float_arrays(batch_inputs(batch))
                if names and isinstance(arrays, list):
                    arrays = dict(zip(names, arrays))  # the calibrator matches several inputs by name
                yield arrays
        return gen

    def _raw_calibration(self, prep: _Prepared, dataloader: Iterable[Any], iterations: int) -> bytes:
        """The float model with min/max of every tensor recorded, from ``iterations`` batches; run once per count."""
        key = (iterations,)
        if key not in self._calibrated:
            conv = prep.source.converter()
            conv.optimizations = [tf().lite.Optimize.DEFAULT]
            conv.representative_dataset = self._representative(dataloader, iterations, prep.source.input_names())
            conv.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv._experimental_calibrate_only = True  # the step QuantizationDebugger uses; quantized below
            self._calibrated[key] = run_converter(conv, prep.source)
        return self._calibrated[key]

    def _activation_samples(self, calibrated: bytes, dataloader: Iterable[Any], iterations: int,
                            tensors: Iterable[int], input_names: Optional[List[str]]) -> Dict[int, List[np.ndarray]]:
        """Samples of the given tensors' values over the calibration batches (for kl and percentile)."""
        key = (iterations,)
        store = self._samples.setdefault(key, {})
        need = sorted(set(tensors) - set(store))
        if need:
            runner = TFLiteModel(calibrated, num_threads=1, input_names=input_names)
            interp = runner._interpreter(debug=True)
            rng = np.random.default_rng(0)
            for t in need:
                store[t] = []
            for batch in itertools.islice(iter(dataloader), iterations):
                self.calibration_batches += 1
                runner._run(interp, as_float_arrays(batch_inputs(batch)))
                for t in need:
                    store[t].append(subsample(interp.get_tensor(t), rng))
        return store

    def _calibrated_model(self, tune_cfg: TuneCfg, prep: _Prepared, dataloader: Iterable[Any]) -> bytes:
        """The calibrated model for this tune_cfg's calibration key, with kl/percentile ranges written in."""
        key = calibration_key(tune_cfg)
        if key in self._stats:
            return self._stats[key]
        iterations = int(tune_cfg["calibration"]["iterations"])
        raw = self._raw_calibration(prep, dataloader, iterations)
        cal_ops = fb.op_list(raw)
        to_cal = fb.match_ops(prep.float_ops, cal_ops)
        wanted: Dict[int, str] = {}
        for name, op_cfg in tune_cfg["ops"].items():
            algo = op_cfg.get("activation", {}).get("algorithm", "minmax")
            if not is_quantized(op_cfg) or algo == "minmax":
                continue
            for t in cal_ops[to_cal[prep.names[name].index]].outputs:
                wanted[t] = algo
        result = raw
        if wanted:
            ranges = fb.tensor_ranges(raw)
            wanted = {t: a for t, a in wanted.items() if t in ranges}
            samples = self._activation_samples(raw, dataloader, iterations, wanted, prep.source.input_names())
            new = {t: compute_range(samples[t], a, *ranges[t]) for t, a in wanted.items()}
            result = fb.write_ranges(raw, new)
        self._stats[key] = result
        return result

    def _dynamic_model(self, prep: _Prepared, disable_pc: bool, disable_dense_pc: bool) -> bytes:
        key = (disable_pc, disable_dense_pc)
        if key not in self._dynamic:
            conv = prep.source.converter()
            conv.optimizations = [tf().lite.Optimize.DEFAULT]
            conv._experimental_disable_per_channel = disable_pc
            conv._experimental_disable_per_channel_quantization_for_dense_layers = disable_dense_pc
            self._dynamic[key] = run_converter(conv, prep.source)
        return self._dynamic[key]

    # ------------------------------------------------------------------ running and files
    def infer(self, model: Any, inputs: Any) -> Any:
        if isinstance(model, TFLiteModel):
            return model(inputs)
        return self._prepare(model).source(inputs)

    def _as_tflite(self, model: Any) -> TFLiteModel:
        if isinstance(model, TFLiteModel):
            return model
        prep = self._prepare(model)
        return TFLiteModel(prep.float_content, {n: op.index for n, op in prep.names.items()},
                           num_threads=self.num_threads, input_names=prep.source.input_names())

    def inspect_tensor(self, model: Any, dataloader: Iterable[Any], op_list: Sequence[str],
                       iteration_list: Sequence[int]) -> Dict[str, List[np.ndarray]]:
        """Each op's output, as float, for the chosen batches; an FP32 model runs as its float TFLite conversion."""
        runner = self._as_tflite(model)
        out: Dict[str, List[np.ndarray]] = {name: [] for name in op_list}
        for _, batch in selected_batches(dataloader, iteration_list):
            values = runner.op_outputs(batch_inputs(batch), op_list)
            for name in op_list:
                out[name].append(values[name])
        return out

    def save(self, model: Any, path: str) -> None:
        """Write the model's ``.tflite`` flatbuffer (an FP32 model: its float conversion) into ``path``."""
        self._as_tflite(model).save(path)

    def load(self, path: str, model: Any = None) -> TFLiteModel:
        """Read what :meth:`save` wrote (or a ``.tflite`` file); the flatbuffer holds the whole model, so ``model``
        (the FP32 model, which ``ilit.load`` may pass on) is not needed."""
        return TFLiteModel.load(path, num_threads=self.num_threads)

    def fingerprint(self, model: Any) -> str:
        if isinstance(model, TFLiteModel):
            return hashlib.sha256(model.content).hexdigest()
        prep = self._prepare(model)
        return prep.source.fingerprint() or hashlib.sha256(prep.float_content).hexdigest()


# ---------------------------------------------------------------------- helpers


def run_converter(converter: Any, source: Optional[Source] = None) -> bytes:
    """Run a TFLite converter with its chatter (the SavedModel dump, calibration notes) kept off the terminal.

    With the ``source`` it converts, whatever the conversion leaves on the user's model is undone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _quiet_stdout(), (source.unchanged() if source is not None else contextlib.nullcontext()):
            return bytes(converter.convert())


class _quiet_stdout:
    """Send file descriptors 1 and 2 to /dev/null for the converter's C++ and print() chatter; restored on exit.

    Conversion errors still surface: the converter raises them as Python exceptions with their messages.
    """

    def __enter__(self) -> None:
        import sys

        self._saved = []
        if os.environ.get("ILIT_TF_VERBOSE"):  # set it to see the converter's own output
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)

    def __exit__(self, *exc: Any) -> None:
        import sys

        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(self._null)


def _mlir_quantize(calibrated: bytes, disable_pc: bool, disable_dense_pc: bool, deny: Sequence[str]) -> bytes:
    """Quantize a calibrated model with the converter's MLIR quantizer, keeping ``deny`` nodes in float."""
    tf()
    from tensorflow.lite.python import convert as tfl_convert

    kwargs: Dict[str, Any] = {}
    if "disable_per_channel_for_dense_layers" in inspect.signature(tfl_convert.mlir_quantize).parameters:
        kwargs["disable_per_channel_for_dense_layers"] = disable_dense_pc
    elif disable_dense_pc and not disable_pc:
        raise ValueError("this TensorFlow's quantizer cannot make fully-connected weights per-tensor while conv "
                         "weights are per-channel; use one granularity for both, or a newer TensorFlow")
    with _quiet_stdout():
        return bytes(tfl_convert.mlir_quantize(
            calibrated, disable_per_channel=disable_pc, fully_quantize=False,
            denylisted_nodes=list(deny) or None, **kwargs))


def _granularity_flags(tune_cfg: TuneCfg, prep: _Prepared) -> Tuple[bool, bool]:
    """The converter's two per-channel switches for the tune_cfg's weight granularities.

    The converter offers per-channel or per-tensor weights for all conv-like ops together, and for
    all fully-connected ops together (per-tensor conv forces per-tensor FC); a mix it cannot build is an error.
    """
    conv: Set[str] = set()
    dense: Set[str] = set()
    for name, op_cfg in tune_cfg["ops"].items():
        w = op_cfg.get("weight", {})
        if not is_quantized(op_cfg) or w.get("dtype", "fp32") == "fp32":
            continue
        (conv if prep.names[name].type in fb.CONV_OPS else dense).add(w.get("granularity", "per_channel"))
    if len(conv) > 1 or len(dense) > 1:
        raise ValueError("the TFLite converter sets weight granularity for all conv ops at once and for all "
                         f"fully-connected ops at once; this tune_cfg mixes them (conv: {sorted(conv)}, "
                         f"dense: {sorted(dense)})")
    disable_pc = conv == {"per_tensor"}
    if disable_pc and dense == {"per_channel"}:
        raise ValueError("the TFLite converter cannot quantize fully-connected weights per channel while conv "
                         "weights are per tensor")
    return disable_pc, disable_pc or dense == {"per_tensor"}
