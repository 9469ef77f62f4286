"""The one module that knows which torch quantization stacks ilit-pytorch drives.

Two backends for the static approach: torchao's PT2E (``torch.export``, ``X86InductorQuantizer``,
``torch.compile`` with Inductor and freezing), the default where ``torch.export`` captures the model
and torchao is installed, and FX graph mode (``torch.ao.quantization.quantize_fx``, x86 fbgemm/oneDNN
kernels) for the rest, for dynamic and for QAT. ``ILIT_PYTORCH_BACKEND=fx|pt2e`` overrides the choice.
Everything backend-specific lives here: the engine, observers and qconfigs built from a tune_cfg entry,
tracing and fusion, prepare/convert, dynamic quantization and the PT2E export/prepare/convert/compile.
"""

from __future__ import annotations

import copy
import functools
import operator
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import torch
import torch.ao.nn.intrinsic as nni
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    QConfig,
    QConfigMapping,
    quantize_dynamic,
)
from torch.ao.quantization.backend_config import BackendConfig, ObservationType
from torch.ao.quantization.backend_config.x86 import get_x86_backend_config
from torch.ao.quantization.fx.custom_config import FuseCustomConfig, PrepareCustomConfig
from torch.ao.quantization.fx.tracer import QuantizationTracer
from torch.ao.quantization.fx.utils import get_skipped_module_name_and_classes
from torch.ao.quantization.observer import ObserverBase
from torch.ao.quantization.quantize_fx import _fuse_fx, convert_fx, prepare_fx, prepare_qat_fx
from torch.fx import GraphModule

from ilit.logs import get_logger
from ilit.tune_cfg import DYNAMIC, QAT, STATIC, is_quantized

from .observers import PercentileObserver

__all__ = [
    "STATIC", "DYNAMIC", "QAT", "APPROACHES", "select_engine", "cpu_has_vnni", "activation_range",
    "make_qconfig", "trace_and_fuse", "prepare", "convert", "dynamic_quantize", "weighted_op_type",
    "dynamic_op_type", "functional_op_kind", "shares_input_observer", "is_observer", "stats_observer",
    "HIST_OBSERVERS",
]

log = get_logger(__name__)

APPROACHES = (STATIC, DYNAMIC, QAT)

_QSCHEMES = {
    ("sym", "per_tensor"): torch.per_tensor_symmetric,
    ("asym", "per_tensor"): torch.per_tensor_affine,
    ("sym", "per_channel"): torch.per_channel_symmetric,
    ("asym", "per_channel"): torch.per_channel_affine,
}
#: activation calibration algorithm -> observer class (``kl`` is torch's histogram search, see README)
_ACT_OBSERVERS = {"minmax": MinMaxObserver, "kl": HistogramObserver, "percentile": PercentileObserver}
#: observers whose statistics are a histogram (the rest keep min/max)
HIST_OBSERVERS = (HistogramObserver,)
_WEIGHT_RANGE = (-128, 127)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_DYNAMIC = (nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
_FUNCTIONAL = {operator.add: "add", torch.add: "add", torch.cat: "cat"}


# ----------------------------------------------------------------------------- engine
def select_engine() -> str:
    """Make the quantized engine x86 (fbgemm/oneDNN dispatch), or fbgemm where x86 is missing."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return name
    raise RuntimeError(f"this torch build has no x86 int8 engine (it has {engines}); "
                       "ilit-pytorch needs an x86 CPU build")


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether the CPU has VNNI/AMX int8 dot products (without them u8*s8 sums saturate in int16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def activation_range() -> Tuple[int, int]:
    """quint8 activation range: 7 bits (reduce_range) without VNNI, 8 bits with it.

    ``ILIT_PYTORCH_REDUCE_RANGE=1`` (or ``0``) forces the choice, e.g. to build models for another CPU.
    """
    forced = os.environ.get("ILIT_PYTORCH_REDUCE_RANGE")
    reduce = forced == "1" if forced in ("0", "1") else not cpu_has_vnni()
    return (0, 127) if reduce else (0, 255)


# ----------------------------------------------------------------------------- qconfigs
def _activation(cfg: Mapping[str, str], qat: bool) -> Callable[..., Any]:
    lo, hi = activation_range()
    qscheme = _QSCHEMES[(cfg["scheme"], "per_tensor")]
    if qat:
        return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=lo, quant_max=hi,
                                      dtype=torch.quint8, qscheme=qscheme)
    return _ACT_OBSERVERS[cfg["algorithm"]].with_args(dtype=torch.quint8, qscheme=qscheme, quant_min=lo, quant_max=hi)


def _weight(cfg: Optional[Mapping[str, str]], qat: bool) -> Callable[..., Any]:
    if not cfg or cfg.get("dtype", "fp32") == "fp32":
        cfg = {"scheme": "sym", "granularity": "per_tensor"}  # ops without weights (add, cat) never use it
    per_channel = cfg["granularity"] == "per_channel"
    qscheme = _QSCHEMES[(cfg["scheme"], cfg["granularity"])]
    lo, hi = _WEIGHT_RANGE
    extra = {"ch_axis": 0} if per_channel else {}
    if qat:
        obs = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        return FakeQuantize.with_args(observer=obs, quant_min=lo, quant_max=hi, dtype=torch.qint8, qscheme=qscheme,
                                      **extra)
    obs = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    return obs.with_args(dtype=torch.qint8, qscheme=qscheme, quant_min=lo, quant_max=hi, **extra)


def make_qconfig(op_cfg: Mapping[str, Any], approach: str) -> Optional[QConfig]:
    """The QConfig for one tune_cfg op entry, or None when the op falls back (to fp32, or bf16: see bf16.py)."""
    act = op_cfg.get("activation", {})
    weight = op_cfg.get("weight")
    if not is_quantized(op_cfg):
        return None
    if approach == DYNAMIC:
        activation = PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
        return QConfig(activation=activation, weight=_weight(weight, qat=False))
    qat = approach == QAT
    return QConfig(activation=_activation(act, qat), weight=_weight(weight, qat))


# ----------------------------------------------------------------------------- graph mode
@functools.lru_cache(maxsize=1)
def backend_config() -> BackendConfig:
    return get_x86_backend_config()


@functools.lru_cache(maxsize=1)
def _share_patterns() -> frozenset:
    """Single-op patterns whose output shares the input's observer (pooling, relu, flatten, ...)."""
    out = set()
    for cfg in backend_config().configs:
        shares = cfg.observation_type == ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT
        if shares and not isinstance(cfg.pattern, tuple):
            out.add(cfg.pattern)
    return frozenset(out)


def shares_input_observer(target: Any) -> bool:
    """Whether a node with this target (module class, function or method name) just passes its input's qparams on."""
    try:
        return target in _share_patterns()
    except TypeError:  # unhashable target
        return False


def weighted_op_type(module: nn.Module) -> Optional[str]:
    """The op type reported for a (possibly fused) conv/linear module, or None if the backend cannot quantize it."""
    if isinstance(module, nni._FusedModule):
        return type(module).__name__ if isinstance(module[0], _WEIGHTED) else None
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None  # MultiheadAttention reads its weight directly: it cannot be swapped
    return type(module).__name__ if isinstance(module, _WEIGHTED) else None


def dynamic_op_type(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return None
    return type(module).__name__ if type(module) in _DYNAMIC else None


def functional_op_kind(target: Any) -> Optional[str]:
    """'add' or 'cat' for the functional ops reported as tunable, else None."""
    try:
        return _FUNCTIONAL.get(target)
    except TypeError:
        return None


def stats_observer(kind: str) -> nn.Module:
    """A fresh observer recording the statistics ``kind`` needs: 'minmax' or 'hist' (a histogram)."""
    return MinMaxObserver() if kind == "minmax" else HistogramObserver()


def is_observer(module: nn.Module) -> bool:
    return isinstance(module, ObserverBase)


def _quiet() -> warnings.catch_warnings:
    """torch.ao.quantization warns that it is deprecated on every call; say it once in the README instead."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return ctx


def trace_and_fuse(module: nn.Module, is_qat: bool) -> Tuple[GraphModule, Dict[str, Tuple[str, Any]]]:
    """Trace and fuse ``module`` exactly as ``prepare_fx`` will; also return each node's (module path, type).

    ``module`` itself is left as it is: the graph module gets its own containers, folded convs are
    copies, and other fused modules wrap the original leaves (so read the result, never train it).
    """
    ctx = _quiet()
    try:
        names, classes = get_skipped_module_name_and_classes(PrepareCustomConfig(), False)
        tracer = QuantizationTracer(names, classes)
        gm = GraphModule(module, tracer.trace(module))
        fused = _fuse_fx(gm, is_qat, FuseCustomConfig(), backend_config())
        return fused, dict(tracer.node_name_to_scope)
    finally:
        ctx.__exit__(None, None, None)


def prepare(module: nn.Module, entries: Iterable[Tuple[Any, ...]], example_inputs: Tuple[Any, ...],
            is_qat: bool) -> GraphModule:
    """Insert observers (or fake-quants) per node. ``entries`` are ("name", module_name, qconfig) or
    ("order", module_path, object_type, index, qconfig); everything else stays fp32 (global qconfig None)."""
    mapping = QConfigMapping()
    for kind, *args in entries:
        if kind == "name":
            mapping.set_module_name(*args)
        else:
            mapping.set_module_name_object_type_order(*args)
    select_engine()
    ctx = _quiet()
    try:
        fn = prepare_qat_fx if is_qat else prepare_fx
        return fn(module, mapping, example_inputs, backend_config=backend_config())
    finally:
        ctx.__exit__(None, None, None)


_META = ("size", "dim")


def float_boundary(x: torch.Tensor) -> torch.Tensor:
    """Identity: put between a float op and the quantize of one of its users, so FX keeps the op in float."""
    return x


def _keep_float_outputs(prepared: GraphModule) -> None:
    """Keep a LayerNorm (or another op FX lowers by pattern) float when it also feeds a float op.

    FX's lowering swaps ``dequantize -> LayerNorm -> quantize`` for a quantized LayerNorm without checking the
    LayerNorm's other users (torch's own TODO), which then get an int8 tensor: a post-LN block whose Linear
    falls back (or reads it through SmoothQuant's InputScale) would fail. A :func:`float_boundary` before the
    observers breaks that pattern; the LayerNorm then runs in float and its quantized users quantize its output.
    """
    from torch.ao.quantization.fx._lower_to_native_backend import SPECIAL_PATTERN_LOWER_MODULE_MAP

    modules = dict(prepared.named_modules(remove_duplicate=False))
    changed = False
    for node in list(prepared.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) not in SPECIAL_PATTERN_LOWER_MODULE_MAP:
            continue
        observed = [u for u in node.users
                    if u.op == "call_module" and isinstance(modules.get(u.target), (ObserverBase, FakeQuantize))]
        # reading .shape / .size() / .dim() works on an int8 tensor too: only users of the values count
        floats = [u for u in node.users if u not in observed and not (
            (u.op == "call_function" and u.target is getattr) or (u.op == "call_method" and u.target in _META))]
        if not observed or not floats:
            continue
        with prepared.graph.inserting_after(node):
            boundary = prepared.graph.call_function(float_boundary, (node,))
        for user in observed:
            user.replace_input_with(node, boundary)
        changed = True
    if changed:
        prepared.recompile()


def convert(prepared: GraphModule) -> GraphModule:
    """Lower a calibrated (or trained) prepared model to quantized kernels."""
    select_engine()
    _keep_float_outputs(prepared)
    ctx = _quiet()
    try:
        converted = convert_fx(prepared, backend_config=backend_config())
    finally:
        ctx.__exit__(None, None, None)
    # string annotations (``from __future__ import annotations`` in the user's module) would be copied
    # into the generated code as names TorchScript cannot resolve; the graph does not need them
    if any(isinstance(n.type, str) for n in converted.graph.nodes):
        for n in converted.graph.nodes:
            if isinstance(n.type, str):
                n.type = None
        converted.recompile()
    return converted


EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def quantize_embedding(module: nn.Module) -> nn.Module:
    """An int8 weight-only copy of an ``nn.Embedding``/``EmbeddingBag`` (per-row float scale and offset):
    lookups return float rows, the table is stored in a quarter of the bytes."""
    from torch.ao.nn.quantized import Embedding as QEmbedding, EmbeddingBag as QEmbeddingBag
    from torch.ao.quantization import float_qparams_weight_only_qconfig

    select_engine()
    ctx = _quiet()
    try:
        work = copy.copy(module)  # from_float reads .qconfig: set it on a shallow copy, not the user's module
        work.qconfig = float_qparams_weight_only_qconfig
        cls = QEmbeddingBag if isinstance(module, nn.EmbeddingBag) else QEmbedding
        return cls.from_float(work)
    finally:
        ctx.__exit__(None, None, None)


def dynamic_quantize(model: nn.Module, qconfigs: Mapping[str, QConfig]) -> nn.Module:
    """Eager dynamic quantization of the named Linear/LSTM/GRU modules (a new model)."""
    select_engine()
    ctx = _quiet()
    try:
        return quantize_dynamic(model, qconfig_spec=dict(qconfigs), inplace=False)
    finally:
        ctx.__exit__(None, None, None)


# ----------------------------------------------------------------------------- PT2E (torchao)
PT2E_ENV = "ILIT_PYTORCH_BACKEND"
PT2E_TIMING_ENV = "ILIT_PYTORCH_PT2E_TIMING"
PT2E_OPS = (nn.Linear, nn.Conv2d)  # the ops offered for tuning (X86InductorQuantizer's weighted ops)
PT2E_INSTALL = "pip install 'ilit-pytorch[pt2e]'"


class ExportError(RuntimeError):
    """torch.export could not capture the model (the adaptor then uses FX for it)."""


def requested_backend() -> str:
    """``auto`` (unset: PT2E where torch.export captures the model, else FX), ``fx`` or ``pt2e``, from
    ``ILIT_PYTORCH_BACKEND``; anything else is refused with the choices."""
    name = os.environ.get(PT2E_ENV, "auto").strip().lower() or "auto"
    if name not in ("auto", "fx", "pt2e"):
        raise ValueError(f"{PT2E_ENV}={name!r}: use fx (FX graph mode) or pt2e (torchao PT2E + Inductor), or leave "
                         "it unset (PT2E for the static approach where torch.export captures the model, else FX)")
    return name


def pt2e_timing() -> str:
    """What the performance objective times for a PT2E candidate: ``compiled`` (the default: Inductor with
    freezing, what the user runs) or ``reference`` (the uncompiled q/dq graph: no compile, e.g. in tests),
    from ``ILIT_PYTORCH_PT2E_TIMING``."""
    name = os.environ.get(PT2E_TIMING_ENV, "compiled").strip().lower() or "compiled"
    if name not in ("compiled", "reference"):
        raise ValueError(f"{PT2E_TIMING_ENV}={name!r}: use compiled (the default) or reference")
    return name


def pt2e_missing() -> Optional[str]:
    """Why PT2E cannot be used here (torchao missing), or None."""
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchao built for another torch
        return f"torchao is not importable ({type(exc).__name__}: {exc}); {PT2E_INSTALL}"
    return None


def pt2e_export(model: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any],
                strict: bool = False) -> GraphModule:
    """``torch.export`` of ``model`` in eval mode, as a GraphModule; strict=False by default, as Hugging Face
    models need (strict=True is tried when the quantizer cannot annotate the non-strict graph)."""
    from torch.export import Dim
    from torch.utils._pytree import tree_map

    def batch_dim(t: Any) -> Any:  # the batch size may change (the eval batches, batch 1 in production)
        return {0: Dim.AUTO} if isinstance(t, torch.Tensor) and t.dim() > 0 else None

    import inspect
    order = [p for p in inspect.signature(model.forward).parameters if p in kwargs]
    order += [k for k in kwargs if k not in order]
    kwargs = {k: kwargs[k] for k in order}
    shapes = tuple(tree_map(batch_dim, a) for a in args) + tuple(tree_map(batch_dim, v) for v in kwargs.values())
    with torch.no_grad():
        return torch.export.export(model, tuple(args), kwargs, dynamic_shapes=shapes, strict=strict).module()


def _pt2e_config(op_cfg: Mapping[str, Any]) -> Any:
    """The torchao QuantizationConfig for one tune_cfg op entry (X86InductorQuantizer's, observers per entry)."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config
    from torchao.quantization.pt2e import MinMaxObserver as AoMinMax  # torchao's own observers, not torch.ao's
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    lo, hi = activation_range()
    base = get_default_x86_inductor_quantization_config(reduce_range=hi == 127)
    act = op_cfg.get("activation", {})
    if act.get("algorithm", "kl") == "minmax":
        spec = QuantizationSpec(dtype=torch.uint8, quant_min=lo, quant_max=hi, qscheme=torch.per_tensor_affine,
                                is_dynamic=False, observer_or_fake_quant_ctr=AoMinMax.with_args(eps=2 ** -12))
        base = QuantizationConfig(spec, spec, base.weight, base.bias, False)
    weight = op_cfg.get("weight") or {}
    if weight.get("granularity") == "per_tensor":
        wspec = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                 is_dynamic=False, observer_or_fake_quant_ctr=AoMinMax.with_args(eps=2 ** -12))
        base = QuantizationConfig(base.input_activation, base.output_activation, wspec, base.bias, False)
    return base


def _choice(op_cfg: Mapping[str, Any]) -> Tuple[Any, Any]:
    """What of a tune_cfg op entry changes its torchao config (activation algorithm, weight granularity)."""
    return (op_cfg.get("activation", {}).get("algorithm", "kl"), (op_cfg.get("weight") or {}).get("granularity"))


def pt2e_prepare(exported: GraphModule, op_cfgs: Mapping[str, Optional[Mapping[str, Any]]],
                 layout: Optional[Mapping[str, Optional[Mapping[str, Any]]]] = None) -> GraphModule:
    """Annotate ``exported`` and insert observers: the most common choice of the quantized ops is the global
    config, as by hand (so X86InductorQuantizer also quantizes what it fuses or propagates int8 through:
    conv+add+relu, pools, cat, ...); an op with another choice gets its own config by module name, and an
    fp32 op (None) is left unannotated. With no quantized op at all nothing is annotated. ``layout`` (default
    ``op_cfgs``) decides which ops are global and which by name: a rebuild gives the tuned cfgs, so its graph
    has the same quantize nodes even where its own observers differ."""
    from collections import Counter

    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    layout = op_cfgs if layout is None else layout
    quantizer = X86InductorQuantizer()
    chosen = Counter(_choice(cfg) for cfg in layout.values() if cfg is not None)
    if chosen:
        common = chosen.most_common(1)[0][0]
        first = next(name for name, c in layout.items() if c is not None and _choice(c) == common)
        quantizer.set_global(_pt2e_config(op_cfgs[first] or {}))
        for name, cfg in layout.items():
            if cfg is None or op_cfgs.get(name) is None:
                quantizer.set_module_name_qconfig(name, None)
            elif _choice(cfg) != common:
                quantizer.set_module_name_qconfig(name, _pt2e_config(op_cfgs[name] or {}))
    return prepare_pt2e(exported, quantizer)


def pt2e_convert(prepared: GraphModule) -> GraphModule:
    """The calibrated graph with quantize/dequantize ops (reference numerics; ``torch.compile`` makes it int8).

    convert_pt2e folds each quantized weight into a new int8 constant but leaves the float parameter it
    came from on the module; those are dropped, so the model (and what is saved of it) holds int8 weights only.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    used = {str(n.target) for n in converted.graph.nodes if n.op == "get_attr"}
    for name, _ in [*converted.named_parameters(), *converted.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, leaf)
    return converted


_PT2E_WEIGHTED = ("aten.linear.", "aten.conv1d.", "aten.conv2d.", "aten.conv3d.")
_PT2E_UNARY = ("aten.relu.", "aten.relu_.", "aten.hardtanh.", "aten.hardtanh_.")


def pt2e_op_nodes(gm: GraphModule, names: Iterable[str]) -> Dict[str, str]:
    """{graph node name: op name} for the Linear/Conv modules ``names`` of an exported (or converted) graph:
    the node after the op and any ReLU it feeds alone, as FX's fused conv-bn-relu output is."""
    wanted = set(names)
    out: Dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith(_PT2E_WEIGHTED):
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack else None
        if path not in wanted:
            continue
        while len(node.users) == 1 and str(next(iter(node.users)).target).startswith(_PT2E_UNARY):
            node = next(iter(node.users))
        out[node.name] = path
    return out


def pt2e_dead_ops(gm: GraphModule, names: Iterable[str]) -> List[str]:
    """The Linear/Conv modules among ``names`` none of whose calls in the exported graph reach its output."""
    from .graph import live_nodes

    live = live_nodes(gm)
    seen: Set[Optional[str]] = set()
    used: Set[Optional[str]] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith(_PT2E_WEIGHTED):
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack else None
        seen.add(path)
        if node.name in live:
            used.add(path)
    return [n for n in names if n in seen and n not in used]


class PT2ERecorder:
    """Calls an exported (or converted) graph node by node (``torch.fx.Interpreter``) like the graph itself,
    with ``record(op name, value)`` for the nodes ``nodes`` maps to op names (:func:`pt2e_op_nodes`)."""

    def __init__(self, gm: GraphModule, nodes: Mapping[str, str], record: Callable[[str, Any], None]) -> None:
        self.gm, self.nodes, self.record = gm, nodes, record
        self.ilit_call_target = gm  # inputs are bound to the exported signature (calibration.as_call)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.fx._pytree import tree_flatten_spec

        nodes, record = self.nodes, self.record

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                value = super().run_node(n)
                if n.name in nodes:
                    record(nodes[n.name], value)
                return value

        flat = tree_flatten_spec((tuple(args), dict(kwargs)), self.gm._in_spec)  # as the graph's own forward
        return Recorder(self.gm).run(*flat, enable_io_processing=False)


class PT2EModel(nn.Module):
    """A PT2E-quantized model: ``graph_module`` runs the reference q/dq graph (what ilit evaluates, no
    compile); calling the model runs it compiled by Inductor with freezing (int8 kernels, weights pre-packed),
    without autograd. It compiles on its first call and again for each new input shape (static shapes:
    Inductor's int8 conv failed on a dynamic batch size here)."""

    def __init__(self, graph_module: GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.ilit_call_target = graph_module  # inputs are bound to the exported signature (calibration.as_call)
        self._compiled: Any = None
        self.compile_error: Optional[str] = None  # why compiling failed (the reference graph runs instead)
        self.training = False  # an inference model (only the wrapper's flag: exported graphs refuse eval())

    def compiled(self) -> Any:
        """The compiled graph (``torch.compile``, Inductor; the compile itself runs on its first call).

        It sets ``torch._inductor.config.freezing = True`` for the process, as one does by hand: without
        freezing int8 ran no faster than compiled fp32 (facts.md), and ``options={"freezing": True}`` made
        Inductor fail on the int8 conv (``onednn.qconv_prepack``) with torch 2.13.
        """
        if self._compiled is None:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            # kept outside nn.Module's registry: not a submodule, not in state_dict, not deep-copied
            object.__setattr__(self, "_compiled", torch.compile(self.graph_module, dynamic=False))
        return self._compiled

    def __deepcopy__(self, memo: Dict[int, Any]) -> "PT2EModel":
        """A copy that compiles itself again on its first call (a deep copy of the compiled wrapper would be
        the plain, uncompiled reference graph: 10x slower, measured)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = None if key == "_compiled" else copy.deepcopy(value, memo)
        return new

    def runner(self) -> Callable[..., Any]:
        """A callable running this model compiled (what the performance objective times), not an nn.Module:
        the caller does not walk or switch the modes of the graph's submodules."""
        return _CompiledRunner(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():  # freezing applies to inference only
            if self.compile_error is None:
                try:
                    return self.compiled()(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - an Inductor failure: the reference graph still runs
                    out = self.graph_module(*args, **kwargs)  # raises instead if the inputs are what is wrong
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    self.compile_error = f"{type(exc).__name__}: {first}"[:300]
                    log.warning("PT2E model: torch.compile failed (%s); running the uncompiled q/dq reference graph, "
                                "which is slow (ILIT_PYTORCH_BACKEND=fx gives an FX model instead)", self.compile_error)
                    return out
            return self.graph_module(*args, **kwargs)


class _CompiledRunner:
    """Calls a :class:`PT2EModel` (compiled); inputs are bound to its exported signature like the model's."""

    def __init__(self, model: PT2EModel) -> None:
        self.model = model
        self.ilit_call_target = model.graph_module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
