"""``SymbolModel``: a symbolic MXNet model (symbol + params + input names), and conversion from Gluon.

Both what users hand in (a symbol with params, ``-symbol.json``/``.params`` files, a bound Module) and
what the adaptor returns (the INT8 graph) are ``SymbolModel``s. Calling one runs it through a hybridized
Gluon ``SymbolBlock`` (MXNet's cached graph executor, with the oneDNN kernels).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import ilit
import mxnet as mx
import numpy as np

__all__ = ["SymbolModel", "ModelFileError", "to_symbol_model", "as_nd_inputs", "block_params", "checkpoint_files",
           "is_checkpoint"]

META_FILE = "ilit_mxnet.json"
META_FORMAT = 1
PREFIX = "model"
#: operators that run Python callbacks registered in the process; never in a graph ilit writes
PYTHON_OPS = frozenset({"Custom", "_Native", "_NDArray", "_CustomFunction"})
MAX_JSON_BYTES = 256 << 20
_NDARRAY_MAGIC = 0x112  # the first little-endian uint64 of MXNet's NDArray list file (kMXAPINDArrayListMagic)


class ModelFileError(ilit.ModelFileError):
    """A file read as a saved model is not one ilit-mxnet (or MXNet's checkpoint export) wrote.

    ``file`` is its path; the message says what is wrong with it.
    """

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(file, f"{file} is not a model ilit saved (nor an MXNet checkpoint file): {reason}. ilit-mxnet "
                         f"reads only MXNet's symbol JSON and .params formats and its own {META_FILE}, and never "
                         "unpickles: load a directory written by ilit (tuner workspace best_model, adaptor.save) or "
                         "an MXNet checkpoint (HybridBlock.export, mx.model.save_checkpoint)")


def checkpoint_files(path: str, params: Optional[str] = None, epoch: int = 0) -> Tuple[str, str, Optional[str]]:
    """The files :meth:`SymbolModel.load` reads for ``path``: (symbol JSON, params, ilit metadata or None).

    ``path`` is a directory ilit saved, a ``-symbol.json`` (or ``.json``) path, or a checkpoint prefix.
    """
    meta_file = None
    if os.path.isdir(path):
        meta_file = os.path.join(path, META_FILE)
        path = os.path.join(path, PREFIX)
    if path.endswith(".json"):
        if params is None:
            stem = path[: -len("-symbol.json")] if path.endswith("-symbol.json") else path[: -len(".json")]
            params = f"{stem}-{epoch:04d}.params"
        return path, params, meta_file
    return f"{path}-symbol.json", params or f"{path}-{epoch:04d}.params", meta_file


def is_checkpoint(path: Any) -> bool:
    """Whether ``path`` (a str or PathLike) names files :meth:`SymbolModel.load` would read (it reads none)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    try:
        files = checkpoint_files(os.fspath(path))
        return all(f is None or os.path.isfile(f) for f in files)
    except (TypeError, ValueError, OSError):  # bytes paths, NUL characters, ...
        return False


def _mx_reason(exc: BaseException) -> str:
    """The last line of an MXNetError (``Check failed: ...``), without the C++ traceback before it."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last[len("MXNetError: "):] if last.startswith("MXNetError: ") else last


def _read_text_json(file: str, what: str) -> Tuple[str, Any]:
    size = os.path.getsize(file)
    if size > MAX_JSON_BYTES:  # checked before reading: a graph's JSON is kilobytes to a few MB
        raise ModelFileError(file, f"it should be {what} but is {size} bytes (at most {MAX_JSON_BYTES >> 20} MiB)")
    with open(file, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(file, f"it should be {what} (UTF-8 JSON text) but is binary (a pickle?)") from None
    try:
        return text, json.loads(text)
    except RecursionError:
        raise ModelFileError(file, f"it should be {what} but is JSON nested too deeply") from None
    except ValueError as exc:
        raise ModelFileError(file, f"it should be {what} but is not valid JSON ({exc})") from None


def _read_meta(file: str) -> Dict[str, Any]:
    """ilit's metadata: ``{"format": 1, "data_names": [...], "meta": {...}}``, checked field by field."""
    _text, doc = _read_text_json(file, "ilit-mxnet's metadata")
    if not isinstance(doc, dict) or doc.get("format") != META_FORMAT:
        raise ModelFileError(file, f"it should be a JSON object with \"format\": {META_FORMAT}")
    names = doc.get("data_names")
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ModelFileError(file, f"its data_names should be a list of input names, got {names!r}")
    if not isinstance(doc.get("meta", {}), dict):
        raise ModelFileError(file, f"its meta should be a JSON object, got {type(doc['meta']).__name__}")
    return doc


def _read_symbol(file: str, allow_custom_ops: bool = False) -> mx.sym.Symbol:
    """The graph, checked as JSON in Python before MXNet's C++ parser sees it.

    Operators that call Python (``Custom``, registered with ``mx.operator.register`` in this process, and the
    legacy ``_Native``/``_NDArray`` callbacks) are refused unless ``allow_custom_ops``: ilit never writes them,
    and a saved model from elsewhere could otherwise pick any custom operator your process has registered.
    """
    text, doc = _read_text_json(file, "an MXNet symbol")
    if not (isinstance(doc, dict) and isinstance(doc.get("nodes"), list) and isinstance(doc.get("heads"), list)):
        raise ModelFileError(file, "it is JSON but not an MXNet symbol (an object with \"nodes\" and \"heads\")")
    custom = sorted({str(n.get("op")) for n in doc["nodes"] if isinstance(n, dict) and n.get("op") in PYTHON_OPS})
    if custom and not allow_custom_ops:
        raise ModelFileError(file, f"it uses operators that call Python code ({', '.join(custom)}), which ilit never "
                             "writes")
    try:
        return mx.sym.load_json(text)
    except mx.base.MXNetError as exc:
        raise ModelFileError(file, f"MXNet cannot read it as a symbol ({_mx_reason(exc)})") from None


def _read_params(file: str, symbol: mx.sym.Symbol) -> Tuple[Dict[str, mx.nd.NDArray], Dict[str, mx.nd.NDArray]]:
    """arg and aux params from MXNet's NDArray file format (``arg:``/``aux:`` prefixed or plain Gluon names)."""
    with open(file, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or int.from_bytes(head, "little") != _NDARRAY_MAGIC:
        raise ModelFileError(file, "it does not start with the header of MXNet's NDArray file format (a pickle, "
                             "a numpy or torch file?)")
    try:
        loaded = mx.nd.load(file)
    except mx.base.MXNetError as exc:
        raise ModelFileError(file, f"MXNet cannot read its arrays ({_mx_reason(exc)}); the file is damaged or "
                             "truncated") from None
    if not isinstance(loaded, dict):
        raise ModelFileError(file, "it holds a list of arrays without names; parameters are saved by name")
    auxs = set(symbol.list_auxiliary_states())
    arg: Dict[str, mx.nd.NDArray] = {}
    aux: Dict[str, mx.nd.NDArray] = {}
    for key, value in loaded.items():
        kind, _, name = key.partition(":")
        if kind == "aux":
            aux[name] = value
        elif kind == "arg":
            arg[name] = value
        else:  # a plain (Gluon save_parameters style) name
            (aux if key in auxs else arg)[key] = value
    return arg, aux


def as_nd_inputs(inputs: Any) -> List[mx.nd.NDArray]:
    """One batch's inputs (an array, or a list/tuple of them for multi-input models) as float32 NDArrays."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    out = []
    for x in items:
        if isinstance(x, mx.nd.NDArray):
            out.append(x)
        else:
            arr = np.asarray(x)
            out.append(mx.nd.array(arr, dtype=np.float32 if arr.dtype.kind in "fiub" else arr.dtype))
    return out


class SymbolModel:
    """A symbolic MXNet model: ``symbol``, ``arg_params``, ``aux_params`` and the names of its data inputs.

    Free arguments that are neither params nor data (the ``softmax_label`` of a ``SoftmaxOutput``) are fed
    zeros at inference. ``meta`` carries what ilit-mxnet knows about a quantized graph (JSON-serializable).
    """

    def __init__(self, symbol: mx.sym.Symbol, arg_params: Mapping[str, mx.nd.NDArray],
                 aux_params: Optional[Mapping[str, mx.nd.NDArray]] = None,
                 data_names: Optional[Sequence[str]] = None, meta: Optional[Mapping[str, Any]] = None) -> None:
        if not isinstance(symbol, mx.sym.Symbol):
            raise TypeError(f"SymbolModel needs an mxnet Symbol, got {type(symbol).__name__}")
        self.symbol = symbol
        args = set(symbol.list_arguments())
        auxs = set(symbol.list_auxiliary_states())
        self.arg_params: Dict[str, mx.nd.NDArray] = {k: v for k, v in dict(arg_params).items() if k in args}
        self.aux_params: Dict[str, mx.nd.NDArray] = {k: v for k, v in dict(aux_params or {}).items() if k in auxs}
        free = [a for a in symbol.list_arguments() if a not in self.arg_params]
        if data_names is None:
            data_names = [a for a in free if not a.endswith("label")]
        missing = [d for d in data_names if d not in free]
        if missing:
            raise ValueError(f"data_names {missing} are not free inputs of the symbol; its free inputs are {free}")
        self.data_names: List[str] = list(data_names)
        self.label_names: List[str] = [a for a in free if a not in self.data_names]
        missing_aux = [a for a in symbol.list_auxiliary_states() if a not in self.aux_params]
        if missing_aux:
            raise ValueError(f"aux_params lack {missing_aux[:5]}; pass the model's auxiliary states (BatchNorm stats)")
        self.meta: Dict[str, Any] = dict(meta or {})
        self._block: Optional[mx.gluon.SymbolBlock] = None
        self._label_shapes: Dict[Tuple[Any, ...], List[Tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str, params: Optional[str] = None, epoch: int = 0,
             data_names: Optional[Sequence[str]] = None, allow_custom_ops: bool = False) -> "SymbolModel":
        """Load ``path-symbol.json`` + ``path-%04d.params`` (a checkpoint prefix), a ``.json`` path plus
        ``params``, or a directory written by :meth:`save_dir`.

        Only MXNet's own formats (symbol JSON, the NDArray ``.params`` format) and ilit's JSON metadata are
        read, so a file from someone else never runs code (nothing is unpickled). A file that is not what it
        should be raises :class:`ModelFileError` naming it, not MXNet's C++ error. A graph with operators that
        call Python (``Custom``) is refused unless ``allow_custom_ops`` (tune sets it for your own checkpoint).
        """
        sym_file, params_file, meta_file = checkpoint_files(os.fspath(path), params, epoch)
        for f in (sym_file, params_file, meta_file):
            if f is not None and not os.path.isfile(f):
                raise FileNotFoundError(f"{f} does not exist; pass a directory ilit-mxnet saved (model-symbol.json, "
                                        f"model-0000.params, {META_FILE}), a checkpoint prefix (PREFIX-symbol.json "
                                        f"and PREFIX-{epoch:04d}.params) or the .json and .params paths")
        meta: Dict[str, Any] = _read_meta(meta_file) if meta_file else {}
        data_names = data_names or meta.get("data_names")
        symbol = _read_symbol(sym_file, allow_custom_ops)
        arg, aux = _read_params(params_file, symbol)
        try:
            model = cls(symbol, arg, aux, data_names=data_names, meta=meta.get("meta"))
        except ValueError as exc:
            raise ModelFileError(os.fspath(path), f"its graph ({sym_file}), params ({params_file}) and metadata do "
                                 f"not fit together: {exc}") from None
        missing = [n for n in model.label_names if not n.endswith("label")] if meta_file else []
        if missing:  # ilit saved every parameter: a free input that is neither data nor a label is a lost weight
            raise ModelFileError(params_file, f"it lacks the parameters {missing[:5]} of the graph in {sym_file}")
        return model

    @classmethod
    def from_module(cls, module: mx.mod.Module) -> "SymbolModel":
        """A bound Module with initialized params."""
        if not (module.binded and module.params_initialized):
            raise ValueError("the mx.mod.Module is not bound or its parameters are not initialized: call "
                             "mod.bind(data_shapes=...) and mod.init_params() / mod.set_params(...) (or fit it) "
                             "before tuning")
        arg, aux = module.get_params()
        return cls(module.symbol, arg, aux, data_names=list(module.data_names))

    # ------------------------------------------------------------------ persistence
    def save(self, prefix: str) -> Tuple[str, str]:
        """Write ``prefix-symbol.json`` and ``prefix-0000.params`` (MXNet's checkpoint format); return both paths."""
        sym_file, params_file = f"{prefix}-symbol.json", f"{prefix}-0000.params"
        self.symbol.save(sym_file)
        blob = {f"arg:{k}": v.as_in_context(mx.cpu()) for k, v in self.arg_params.items()}
        blob.update({f"aux:{k}": v.as_in_context(mx.cpu()) for k, v in self.aux_params.items()})
        mx.nd.save(params_file, blob)
        return sym_file, params_file

    def save_dir(self, path: str) -> None:
        """Write the checkpoint as ``path/model-symbol.json``, ``path/model-0000.params`` plus ``ilit_mxnet.json``."""
        os.makedirs(path, exist_ok=True)
        self.save(os.path.join(path, PREFIX))
        with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
            json.dump({"adaptor": "mxnet", "format": 1, "data_names": self.data_names, "meta": self.meta}, f, indent=1,
                      sort_keys=True)

    # ------------------------------------------------------------------ inference
    @property
    def params(self) -> Dict[str, mx.nd.NDArray]:
        return {**self.arg_params, **self.aux_params}

    def type_dict(self) -> Dict[str, Any]:
        """Every argument's dtype (int8 weights of a quantized graph included), for binding executors."""
        types: Dict[str, Any] = {n: np.float32 for n in self.data_names + self.label_names}
        types.update({k: v.dtype for k, v in self.arg_params.items()})
        return types

    def _get_block(self) -> mx.gluon.SymbolBlock:
        if self._block is None:
            inputs = [mx.sym.var(n) for n in self.data_names + self.label_names]
            with warnings.catch_warnings():  # "Cannot decide type for ... data": the inputs are float32
                warnings.simplefilter("ignore", UserWarning)
                block = mx.gluon.SymbolBlock(self.symbol, inputs)
            with tempfile.TemporaryDirectory(prefix="ilit-mx-") as tmp:
                _sym, params_file = self.save(os.path.join(tmp, "m"))
                # dtype_source='saved': the INT8 weights keep their int8 dtype, as quantize_net_v2 does
                block.collect_params().load(params_file, ctx=mx.cpu(), cast_dtype=True, dtype_source="saved")
            block.hybridize(static_alloc=True, static_shape=True)
            self._block = block
        return self._block

    def _labels(self, xs: Sequence[mx.nd.NDArray]) -> List[mx.nd.NDArray]:
        if not self.label_names:
            return []
        key = tuple(x.shape for x in xs)
        if key not in self._label_shapes:
            arg_shapes, _, _ = self.symbol.infer_shape_partial(**{n: x.shape for n, x in zip(self.data_names, xs)})
            shapes = dict(zip(self.symbol.list_arguments(), arg_shapes))
            self._label_shapes[key] = [tuple(shapes[n]) for n in self.label_names]
        return [mx.nd.zeros(s) for s in self._label_shapes[key]]

    def __call__(self, *inputs: Any) -> Union[mx.nd.NDArray, List[mx.nd.NDArray]]:
        """Run one batch; returns an NDArray (a list for several outputs), asynchronously like Gluon does.

        It always runs in inference mode (a graph for inference; oneDNN's INT8 ops fail in train mode).
        """
        if mx.autograd.is_training():
            with mx.autograd.predict_mode():
                return self(*inputs)
        block = self._block if self._block is not None else self._get_block()
        if not self.label_names and len(inputs) == len(self.data_names) and \
                all(type(x) is mx.nd.NDArray for x in inputs):
            return block(*inputs)  # the common case, with no Python work in front of MXNet's cached graph
        xs = as_nd_inputs(inputs[0] if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) else inputs)
        if len(xs) != len(self.data_names):
            raise ValueError(f"the model takes {len(self.data_names)} inputs {self.data_names}, got {len(xs)}")
        return block(*xs, *self._labels(xs))

    def __repr__(self) -> str:
        kind = "INT8" if self.meta.get("quantized") else "FP32"
        return f"SymbolModel({kind}, inputs={self.data_names}, {len(self.params)} params)"


def block_params(block: mx.gluon.HybridBlock, example_inputs: Any = None) -> Dict[str, mx.nd.NDArray]:
    """The block's parameter values by name, running ``example_inputs`` once if some are not initialized yet."""
    params = block.collect_params()
    try:
        return {name: p.data() for name, p in params.items()}
    except mx.gluon.parameter.DeferredInitializationError:
        if example_inputs is None:
            raise ValueError("the Gluon block has parameters whose shapes are not known yet (deferred "
                             "initialization): run it once on a batch before handing it to ilit") from None
        with mx.autograd.predict_mode():  # shapes only: BatchNorm must not update its running statistics
            block(*as_nd_inputs(example_inputs))
        return {name: p.data() for name, p in params.items()}
    except RuntimeError as exc:
        raise ValueError(f"the Gluon block's parameters are not initialized ({exc}); call block.initialize() "
                         "and train it first") from None


def trace_block(block: mx.gluon.HybridBlock, n_inputs: Optional[int] = None) -> Tuple[mx.sym.Symbol, List[str]]:
    """The block's symbolic graph, built by calling it on symbol variables named as ``HybridBlock.export`` does.

    This neither hybridizes nor runs the user's block. ``n_inputs`` defaults to trying 1 to 8 inputs.
    """
    counts = [n_inputs] if n_inputs else list(range(1, 9))
    last: Optional[Exception] = None
    for n in counts:
        names = ["data"] if n == 1 else [f"data{i}" for i in range(n)]
        try:
            out = block(*[mx.sym.var(name) for name in names])
        except TypeError as exc:  # wrong number of inputs
            last = exc
            continue
        if isinstance(out, (list, tuple)):
            out = mx.sym.Group(list(out))
        return out, names
    raise ValueError(f"could not trace the Gluon block {type(block).__name__} with symbolic inputs: {last}")


def to_symbol_model(block: mx.gluon.HybridBlock, example_inputs: Any = None) -> SymbolModel:
    """A Gluon ``HybridBlock`` as an FP32 :class:`SymbolModel` (same graph and params as ``block.export``)."""
    if example_inputs is None:
        n = None
    else:
        n = len(example_inputs) if isinstance(example_inputs, (list, tuple)) else 1
    symbol, names = trace_block(block, n)
    # copies: the SymbolModel (and the INT8 models built from it) must not follow later training of the block
    values = {k: v.copy() for k, v in block_params(block, example_inputs).items()}
    auxs = set(symbol.list_auxiliary_states())
    arg = {k: v for k, v in values.items() if k not in auxs}
    aux = {k: v for k, v in values.items() if k in auxs}
    return SymbolModel(symbol, arg, aux, data_names=names)
