"""``TFLiteModel``: a TFLite flatbuffer run by the LiteRT interpreter; what ``quantize`` returns and ``load`` reads."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ilit
import numpy as np

from ._deps import interpreter_class, op_resolver_without_delegates
from .flatbuffer import OpInfo, op_list

MODEL_FILE = "model.tflite"
META_FILE = "ilit_tensorflow.json"
MAX_MODEL_BYTES = (2 << 30) - 1  # flatbuffers address at most 2 GiB
MAX_META_BYTES = 16 << 20


def default_threads() -> int:
    """The CPUs this process may use: the interpreter's thread count unless one is given."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _as_list(inputs: Any) -> List[np.ndarray]:
    if isinstance(inputs, Mapping):
        return [np.asarray(v) for v in inputs.values()]
    if isinstance(inputs, (list, tuple)):
        return [np.asarray(v) for v in inputs]
    return [np.asarray(inputs)]


def _dequantize(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Float values of an int8/uint8 tensor from its (per-tensor or per-axis) scale and zero point."""
    if value.dtype not in (np.int8, np.uint8, np.int16):
        return np.array(value, dtype=np.float32, copy=True)
    qp = detail.get("quantization_parameters") or {}
    scales, zps = np.asarray(qp.get("scales", [])), np.asarray(qp.get("zero_points", []))
    if scales.size == 0:
        scale, zp = detail["quantization"]
        return ((value.astype(np.float32) - zp) * scale).astype(np.float32)
    if scales.size == 1:
        return ((value.astype(np.float32) - zps[0]) * scales[0]).astype(np.float32)
    shape = [1] * value.ndim
    shape[int(qp.get("quantized_dimension", 0))] = -1
    return ((value.astype(np.float32) - zps.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


class InvalidModelFileError(ilit.ModelFileError):
    """A file handed to :meth:`TFLiteModel.load` is not a model the TensorFlow adaptor saved."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(file, f"{file!r} is not a model ilit saved: {reason}. The TensorFlow adaptor loads the "
                         f"directory its save() wrote ({MODEL_FILE} and {META_FILE}) or a .tflite file, and runs "
                         "no code from either; save the model again with adaptor.save(model, path)")


def _read_meta(file: str) -> Dict[str, Any]:
    """The op names, tune_cfg and input names :meth:`TFLiteModel.save` wrote, checked to be JSON of that shape."""
    if os.path.getsize(file) > MAX_META_BYTES:
        raise InvalidModelFileError(file, f"it is over {MAX_META_BYTES >> 20} MiB, far more than ilit writes")
    with open(file, "rb") as f:
        raw = f.read(MAX_META_BYTES + 1)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InvalidModelFileError(file, "it is JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelFileError(file, f"it is not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise InvalidModelFileError(file, f"it holds a JSON {type(meta).__name__}, not an object")
    unknown = sorted(set(meta) - {"adaptor", "op_index", "tune_cfg", "input_names"})
    if unknown:
        raise InvalidModelFileError(file, f"it has unknown keys {unknown}; expected adaptor, op_index, tune_cfg, "
                                    "input_names")
    if meta.get("adaptor", "tensorflow") != "tensorflow":
        raise InvalidModelFileError(file, f"its adaptor is {meta['adaptor']!r}: another adaptor saved this directory")
    op_index = meta.get("op_index")
    if op_index is not None and not (isinstance(op_index, dict) and all(
            isinstance(k, str) and type(v) is int for k, v in op_index.items())):
        raise InvalidModelFileError(file, "its op_index must map op names to operator indices (integers)")
    tune_cfg = meta.get("tune_cfg")
    if tune_cfg is not None and not isinstance(tune_cfg, dict):
        raise InvalidModelFileError(file, f"its tune_cfg must be an object or null, not {type(tune_cfg).__name__}")
    names = meta.get("input_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise InvalidModelFileError(file, "its input_names must be a list of strings or null")
    return meta


def _checked_interpreter(file: str, model: "TFLiteModel") -> Any:
    """The interpreter of a loaded flatbuffer, after checking it is a verified TFLite model of builtin ops only."""
    content = model.content
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise InvalidModelFileError(file, f"it is not a TFLite flatbuffer (bytes 4-8 are {content[4:8]!r}, "
                                    "not the b'TFL3' file identifier)")
    # custom ops first, before any interpreter exists: TensorFlow's interpreter links the Flex delegate, whose
    # ops (FlexWriteFile, ...) are TensorFlow kernels that read and write files. Our parser is pure Python.
    try:
        ops = model.ops
    except Exception as exc:  # noqa: BLE001 - a damaged flatbuffer: refused either way
        raise InvalidModelFileError(file, f"its operators cannot be read ({type(exc).__name__}: {exc})") from None
    custom = sorted({op.type for op in ops if op.type == "CUSTOM" or op.type.isdigit()})
    if custom:
        raise InvalidModelFileError(file, f"it has custom or unknown ops ({custom}), which ilit never writes")
    try:  # LiteRT verifies the whole flatbuffer (offsets, sizes) before building anything from it
        interp = interpreter_class()(model_content=content, num_threads=model.num_threads)
    except (ValueError, RuntimeError) as exc:
        raise InvalidModelFileError(file, f"LiteRT refuses it: {exc}") from None
    return interp


class TFLiteModel:
    """A TFLite model: the flatbuffer bytes, the ilit op names mapped to its operators, and a lazy interpreter.

    Calling it on a batch (an array, or a list/dict of arrays for several inputs) returns the output
    array, or a list of them in the source model's order when the model has several outputs.
    """

    def __init__(self, content: bytes, op_index: Optional[Mapping[str, int]] = None,
                 tune_cfg: Optional[Mapping[str, Any]] = None, num_threads: Optional[int] = None,
                 input_names: Optional[Sequence[str]] = None) -> None:
        self.content = bytes(content)
        #: the signature input names in the order a list of inputs gives them (the source model's order)
        self.input_names: Optional[List[str]] = list(input_names) if input_names else None
        self.op_index: Dict[str, int] = dict(op_index or {})
        self.tune_cfg = dict(tune_cfg) if tune_cfg is not None else None
        self.num_threads = num_threads or default_threads()
        self._interp: Any = None
        self._debug_interp: Any = None
        self._ops: Optional[List[OpInfo]] = None

    # ------------------------------------------------------------------ inspection
    @property
    def size(self) -> int:
        """Bytes of the flatbuffer, i.e. of the saved model file."""
        return len(self.content)

    @property
    def ops(self) -> List[OpInfo]:
        """The model's operators with their tensor types, in execution order."""
        if self._ops is None:
            self._ops = op_list(self.content)
        return self._ops

    def op(self, name: str) -> OpInfo:
        """The operator that the ilit op ``name`` became in this model."""
        if name not in self.op_index:
            raise KeyError(f"no op {name!r} in this model; it has {sorted(self.op_index)}")
        return self.ops[self.op_index[name]]

    # ------------------------------------------------------------------ running
    def _interpreter(self, debug: bool = False) -> Any:
        cls = interpreter_class()
        if debug:
            if self._debug_interp is None:
                self._debug_interp = cls(model_content=self.content, num_threads=1,
                                         experimental_op_resolver_type=op_resolver_without_delegates(),
                                         experimental_preserve_all_tensors=True)
            return self._debug_interp
        if self._interp is None:
            self._interp = cls(model_content=self.content, num_threads=self.num_threads)
        return self._interp

    def _input_details(self, interp: Any, inputs: Any) -> List[Dict[str, Any]]:
        """The interpreter's input details in the order of ``inputs``, matched by signature name for several."""
        details = interp.get_input_details()
        names = list(inputs) if isinstance(inputs, Mapping) else self.input_names
        if len(details) < 2 or not names:
            return details
        sig = interp.get_signature_list()
        if len(sig) != 1:
            return details
        by_name = {n: d["index"] for n, d in interp.get_signature_runner(next(iter(sig))).get_input_details().items()}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"inputs {missing} are not inputs of the model; it takes {sorted(by_name)}")
        by_index = {d["index"]: d for d in details}
        return [by_index[by_name[n]] for n in names]

    def _run(self, interp: Any, inputs: Any) -> None:
        arrays = _as_list(inputs)
        details = self._input_details(interp, inputs)
        if len(arrays) != len(details):
            raise ValueError(f"the model takes {len(details)} inputs, got {len(arrays)}")
        resized = False
        for arr, d in zip(arrays, details):
            if tuple(d["shape"]) != arr.shape:
                interp.resize_tensor_input(d["index"], list(arr.shape), strict=False)
                resized = True
        if resized or not getattr(interp, "_ilit_allocated", False):
            interp.allocate_tensors()
            interp._ilit_allocated = True
        for arr, d in zip(arrays, details):
            interp.set_tensor(d["index"], np.ascontiguousarray(arr, dtype=d["dtype"]))
        interp.invoke()

    def __call__(self, inputs: Any) -> Any:
        interp = self._interpreter()
        self._run(interp, inputs)
        outs = [interp.get_tensor(i) for i in self._output_indices(interp)]
        return outs[0] if len(outs) == 1 else outs

    @staticmethod
    def _output_indices(interp: Any) -> List[int]:
        """The output tensors in the source model's order, as its FP32 inference returns them.

        The interpreter's output details need not follow it (a Keras detector's heads came out as
        size, heatmap, offset), so several outputs are ordered by their signature names: Keras's
        ``output_0, output_1, ...`` by number, other names sorted, as a SavedModel's outputs are.
        """
        details = interp.get_output_details()
        sig = interp.get_signature_list()
        if len(details) < 2 or len(sig) != 1:
            return [d["index"] for d in details]
        by_name = {n: d["index"] for n, d in interp.get_signature_runner(next(iter(sig))).get_output_details().items()}
        numbered = all(re.fullmatch(r"output_\d+", n) for n in by_name)
        names = sorted(by_name, key=(lambda n: int(n.rsplit("_", 1)[1])) if numbered else None)
        return [by_name[n] for n in names]

    def op_outputs(self, inputs: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
        """The first output of each named op for one batch, dequantized to float where it is integer."""
        interp = self._interpreter(debug=True)
        self._run(interp, inputs)
        details = {d["index"]: d for d in interp.get_tensor_details()}
        out = {}
        for name in names:
            t = self.op(name).outputs[0]
            out[name] = _dequantize(interp.get_tensor(t), details[t])
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> None:
        """Write ``model.tflite`` (the flatbuffer) and a small JSON of op names and tune_cfg into ``path``."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, MODEL_FILE), "wb") as f:
            f.write(self.content)
        with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
            json.dump({"adaptor": "tensorflow", "op_index": self.op_index, "tune_cfg": self.tune_cfg,
                       "input_names": self.input_names}, f,
                      indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str, num_threads: Optional[int] = None) -> "TFLiteModel":
        """Read a directory written by :meth:`save`, or a bare ``.tflite`` file.

        A saved model may come from someone else, so nothing read here can run code: the flatbuffer is
        checked by LiteRT's verifier (no Python object is unpickled from it) and must use only builtin ops,
        as every model ilit writes does; the metadata is plain JSON of a fixed shape. Anything else is a
        :class:`InvalidModelFileError` naming the file.
        """
        file = os.fspath(path)
        if not os.path.isfile(file):
            file = os.path.join(file, MODEL_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no {MODEL_FILE} in {os.fspath(path)!r}; expected a directory written by the "
                                    "TensorFlow adaptor's save, or a .tflite file")
        size = os.path.getsize(file)
        if size > MAX_MODEL_BYTES:  # a flatbuffer cannot exceed 2 GiB: refused before reading it
            raise InvalidModelFileError(file, f"it is {size} bytes, more than a TFLite flatbuffer can be (2 GiB)")
        with open(file, "rb") as f:
            content = f.read(MAX_MODEL_BYTES + 1)
        meta_file = os.path.join(os.path.dirname(file), META_FILE)
        meta = _read_meta(meta_file) if os.path.isfile(meta_file) else {}
        model = cls(content, op_index=meta.get("op_index"), tune_cfg=meta.get("tune_cfg"), num_threads=num_threads,
                    input_names=meta.get("input_names"))
        model._interp = _checked_interpreter(file, model)
        bad = {n: i for n, i in model.op_index.items() if not 0 <= i < len(model.ops)}
        if bad:
            raise InvalidModelFileError(meta_file, f"its op_index points at ops {bad} that {MODEL_FILE} does not "
                                        f"have (it has {len(model.ops)} ops)")
        return model

    def __repr__(self) -> str:
        return f"TFLiteModel({self.size} bytes, {len(self.op_index)} named ops)"
