"""``PyTorchAdaptor``: real INT8 quantization of torch.nn models for ilit's tuning loop."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
import weakref
from typing import (Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple)

import numpy as np

from ilit import Adaptor, calibration_key
from ilit.interrupts import raise_if_interrupted
from ilit.text import printable
from ilit.tune_cfg import TuneCfg, bf16_ops, is_quantized
from ilit.logs import get_logger
from ilit.batches import batch_inputs, selected_batches

from ._deps import require_torch

torch = require_torch()
from torch import nn  # noqa: E402

from . import backend  # noqa: E402
from .backend import DYNAMIC, QAT, STATIC  # noqa: E402
from .calibration import (Tap, as_call, call_model, collect_stats, describe_inputs, load_stats,  # noqa: E402
                          run_batches,
                          stat_kinds, tapped_model)
from .graph import (Analysis, Op, analyze, find_functional, get_submodule, keep_off_fast_path,  # noqa: E402
                    qconfig_entries, set_submodule)
from .modes import eval_mode, restored_modes, training_modules  # noqa: E402
from .serialize import load_model, save_model  # noqa: E402
from . import recipe  # noqa: E402
from . import smoothquant  # noqa: E402
from . import bf16  # noqa: E402

__all__ = ["PyTorchAdaptor", "WEIGHT_CAPABILITY", "ACTIVATION_CAPABILITY"]

log = get_logger(__name__)

WEIGHT_CAPABILITY = {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"],
                     "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]}
ACTIVATION_CAPABILITY = {
    STATIC: {"dtype": ["uint8", "fp32"], "scheme": ["asym", "sym"], "granularity": ["per_tensor"],
             "algorithm": ["minmax", "kl", "percentile"]},
    QAT: {"dtype": ["uint8", "fp32"], "scheme": ["asym", "sym"], "granularity": ["per_tensor"],
          "algorithm": ["minmax"]},
    # dynamic: activations are quantized at run time from each batch's own range
    DYNAMIC: {"dtype": ["uint8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"], "algorithm": ["minmax"]},
}


#: int8 weight-only embeddings: per-row (float scale and offset) asymmetric weights; the indices are not
#: quantized, the activation entry only keeps the space's weight/activation pairing
EMBEDDING_WEIGHT = {"dtype": ["int8", "fp32"], "scheme": ["asym"], "granularity": ["per_channel"],
                    "algorithm": ["minmax"]}

#: what X86InductorQuantizer can do per op (symmetric int8 weights, asymmetric uint8 activations)
PT2E_CAPABILITY = {
    "weight": {"dtype": ["int8", "fp32"], "scheme": ["sym"], "granularity": ["per_channel", "per_tensor"],
               "algorithm": ["minmax"]},
    "activation": {"dtype": ["uint8", "fp32"], "scheme": ["asym"], "granularity": ["per_tensor"],
                   "algorithm": ["minmax", "kl"]},
}


class PyTorchAdaptor(Adaptor):
    """Quantizes ``torch.nn.Module`` models to real INT8 (x86 kernels) with FX graph mode.

    Approaches: post-training static (calibrated, op-wise fallback), post-training dynamic (Linear,
    LSTM, GRU) and quantization-aware training (``q_func(model)`` trains the prepared model).
    """

    name = "pytorch"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.calibration_batches = 0  # batches run to calibrate, counted so tests can check the cache
        self.quantize_calls = 0
        self._analyses: Dict[Tuple[int, bool], Tuple[Any, Analysis]] = {}
        self._stats: Dict[Tuple[int, Any, int], Tuple[Set[str], Any]] = {}  # (model, approach, batches) -> kinds, stats
        self._example: Any = None
        self._warned_train = False
        self._shadow: Tuple[Any, Any] = (None, None)  # (weakref to an int8 model, the copy infer runs)
        self._modules: Tuple[Any, List[nn.Module]] = (None, [])  # (the last fp32 model infer ran, its modules)
        # quantized model id -> (weakref, {add/cat op name: (unit prefix, op)}), for inspect_tensor
        self._functional: Dict[int, Tuple[Any, Dict[str, Tuple[str, Op]]]] = {}
        # (model id, alpha, calibration batches) -> (weakref to the fp32 model, its SmoothQuant-migrated copy)
        self._smoothed: Dict[Tuple[int, float, int], Tuple[Any, nn.Module]] = {}
        # the static approach's backend: pt2e (the default where torch.export captures the model) or fx
        self._forced = backend.requested_backend()  # auto, or fx/pt2e from ILIT_PYTORCH_BACKEND
        self.backend_name = "fx" if self._forced == "fx" else "pt2e"
        self._fx_why = "ILIT_PYTORCH_BACKEND=fx"
        missing = backend.pt2e_missing() if self.backend_name == "pt2e" else None
        if missing:
            self.backend_name = "fx"
            self._fx_why = f"torchao is not installed; {backend.PT2E_INSTALL} for the faster PT2E/Inductor backend"
            if self._forced == "pt2e":
                log.warning("pytorch adaptor: ILIT_PYTORCH_BACKEND=pt2e but %s; using the FX backend", missing)
        # model id -> (weakref, its exported GraphModule, what rebuild needs: the export's input spec and strict)
        self._exports: Dict[int, Tuple[Any, Any, Dict[str, Any]]] = {}
        self._export_failed: Dict[int, str] = {}  # model id -> why torch.export failed (FX is used instead)
        self._told: Set[int] = set()  # models whose backend choice was logged
        self._timing = False  # inside timing_context: a PT2E candidate runs compiled (see _runner)

    @classmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``model`` is one this adaptor tunes: a ``torch.nn.Module`` (a ``torch.fx.GraphModule`` too).

        Not a TorchScript module (FX cannot trace one: pass the ``nn.Module`` it was scripted from), and
        nothing else from torch (a tensor, an optimizer) or from another framework. It only asks
        ``isinstance``, so it never imports another framework to decide.
        """
        return isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule)

    @classmethod
    def reject_reason(cls, model: Any) -> Optional[str]:
        """What to pass instead, for the torch objects :meth:`accepts` refuses (shown in tune's error)."""
        if isinstance(model, torch.jit.ScriptModule):
            return "a TorchScript module, which FX cannot trace: pass the nn.Module it was scripted from"
        if isinstance(model, torch.Tensor):
            return "a tensor, not a model: pass the torch.nn.Module"
        if isinstance(model, type) and issubclass(model, nn.Module):
            return "a class, not a model: pass an instance of it"
        return None

    def fp32_context(self, model: Any) -> ContextManager[Any]:
        """Eval mode for ``eval_func`` and the objective on the user's model; each submodule's mode restored after."""
        return restored_modes(model) if isinstance(model, nn.Module) else contextlib.nullcontext(model)

    @contextlib.contextmanager
    def timing_context(self, threads: Optional[int]) -> Iterator[int]:
        """``torch.set_num_threads(threads)`` while the performance objective times models (None: unchanged);
        yields the count in effect and restores the previous one afterwards."""
        before = torch.get_num_threads()
        if threads is not None and threads != before:
            torch.set_num_threads(threads)
        self._timing = True
        try:
            yield torch.get_num_threads()
        finally:
            self._timing = False
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    # ---------------------------------------------------------------- analysis
    def _approach(self) -> str:
        return self.config.quantization.approach

    def analysis(self, model: nn.Module, is_qat: bool = False) -> Analysis:
        """The units and ops of ``model`` (cached for the life of this adaptor)."""
        key = (id(model), is_qat)
        hit = self._analyses.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
        result = analyze(model, is_qat)
        self._analyses[key] = (weakref.ref(model), result)
        return result

    def query_fw_capability(self, model: nn.Module) -> Dict[str, Any]:
        if not self.accepts(model):  # tune() checks this first; this is for direct calls
            kind = f"{type(model).__module__}.{type(model).__qualname__}"
            reason = self.reject_reason(model)
            why = f" ({reason})" if reason else ""
            raise TypeError(f"the pytorch adaptor takes a torch.nn.Module, not a {kind}{why}")
        approach = self._approach()
        act = ACTIVATION_CAPABILITY[approach]
        ops: Dict[Tuple[str, str], Dict[str, Any]] = {}
        pt2e = self._pt2e(approach) and self._exported(model) is not None
        if approach == STATIC and not pt2e:
            self._say_fx(model)
        if approach == DYNAMIC:
            for name, module in model.named_modules():
                op_type = backend.dynamic_op_type(module)
                if op_type is not None:
                    ops[(name, op_type)] = {"weight": dict(WEIGHT_CAPABILITY), "activation": dict(act)}
        elif pt2e:
            for name, op_type in self._pt2e_ops(model):
                ops[(name, op_type)] = {"weight": dict(PT2E_CAPABILITY["weight"]),
                                        "activation": dict(PT2E_CAPABILITY["activation"])}
        else:
            analysis = self.analysis(model, approach == QAT)
            for op in analysis.ops.values():
                cap = {"activation": dict(act)}
                if op.weighted:
                    cap["weight"] = dict(WEIGHT_CAPABILITY)
                ops[(op.name, op.op_type)] = cap
        if approach in (STATIC, DYNAMIC) and bf16.bf16_enabled():
            ops = bf16.offer_bf16(ops)  # Linear/conv may fall back to bf16 (AMX / AVX512-BF16; see bf16.py)
        if approach != DYNAMIC:
            self._pin_dead_ops(model, ops, pt2e, approach)
        if approach != QAT and not pt2e:
            emb = {(name, type(m).__name__): {"weight": dict(EMBEDDING_WEIGHT), "activation": dict(act)}
                   for name, m in model.named_modules() if type(m) in backend.EMBEDDINGS}
            ops = {**emb, **ops}  # embeddings run first in a transformer
        result: Dict[str, Any] = {"approaches": list(backend.APPROACHES), "op_wise": ops}
        if approach != DYNAMIC and not pt2e:
            # who feeds whom, for fallback strategies (an outlier tensor needs its producer and consumer in fp32)
            result["edges"] = [list(e) for e in analysis.edges]
        # offered where a LayerNorm feeds Linears (pre- and post-LN transformers): CNNs keep their 24 model-wise configs
        groups = smoothquant.find_groups(model, self.analysis(model, False)) if approach == STATIC else []
        if smoothquant.offered(groups):
            result["recipes"] = {smoothquant.RECIPE: {"alpha": list(smoothquant.ALPHAS)}}
        return result

    def _pin_dead_ops(self, model: nn.Module, ops: Dict[Tuple[str, str], Dict[str, Any]], pt2e: bool,
                      approach: str) -> None:
        """Offer no fallback for ops whose output never reaches the model's outputs (a pooler the model drops):
        falling one back cannot change accuracy, so a trial spent on it would be wasted (issue 15)."""
        names = [name for name, _ in ops]
        if pt2e:
            exported = self._exported(model)
            dead = backend.pt2e_dead_ops(exported, names) if isinstance(exported, torch.fx.GraphModule) else []
        else:
            dead = [n for n in self.analysis(model, approach == QAT).dead if n in names]
        if not dead:
            return
        for (name, _), cap in ops.items():
            if name in dead:
                for part in cap.values():
                    part["dtype"] = [d for d in part.get("dtype", []) if d not in ("fp32", "bf16")]
        log.info("pytorch adaptor: %d op(s) whose output reaches none of the model's outputs stay INT8 and are not "
                 "searched (falling them back cannot change accuracy): %s", len(dead),
                 printable(", ".join(dead[:8]) + (" ..." if len(dead) > 8 else "")))

    def _pt2e(self, approach: str) -> bool:
        return self.backend_name == "pt2e" and approach == STATIC

    @staticmethod
    def _pt2e_ops(model: nn.Module) -> List[Tuple[str, str]]:
        """(module name, op type) of the ops tuned on PT2E: the Linear and Conv2d modules."""
        out = []
        for name, module in model.named_modules():
            op_type = backend.weighted_op_type(module) if type(module) in backend.PT2E_OPS else None
            if op_type is not None:
                out.append((name, op_type))
        return out

    def _say_fx(self, model: nn.Module) -> None:
        """Log once per model why the static approach uses FX for it (export failures say so themselves)."""
        if id(model) not in self._told and id(model) not in self._export_failed:
            self._told.add(id(model))
            log.info("pytorch adaptor: %s: FX backend (%s)", type(model).__name__, self._fx_why)

    def _exported(self, model: nn.Module, example: Any = None) -> Any:
        """``model`` captured by ``torch.export`` (cached per model), or None when it cannot be (then the FX
        backend takes it); logs once per model which backend it gets and why. Without any example inputs
        (a direct call before any batch was seen) the answer is True and export happens in ``quantize``."""
        hit = self._exports.get(id(model))
        if hit is not None and hit[0]() is model:
            return hit[1]
        if id(model) in self._export_failed:
            return None
        example = example if example is not None else (
            self.example_inputs if self.example_inputs is not None else self._example)
        if example is None:
            return True
        args, kwargs = as_call(model, example)
        ops: Dict[str, Any] = {name: {} for name, _ in self._pt2e_ops(model)}
        for strict in (False, True):
            step = "torch.export cannot capture"
            try:
                with eval_mode(model):
                    exported = backend.pt2e_export(model, args, kwargs, strict=strict)
                # annotation can fail where export did not: with strict=False one nn.ReLU module called
                # twice (torchvision's ResNet blocks) is one source partition with two outputs; try it now
                step = "X86InductorQuantizer cannot annotate"
                backend.pt2e_prepare(copy.deepcopy(exported), ops)
                break
            except Exception as exc:  # noqa: BLE001 - any export or annotation failure: strict export, then FX
                raise_if_interrupted(exc)
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                if not strict:
                    log.info("pytorch adaptor: %s %s with torch.export(strict=False) (%s); trying strict=True",
                             step, type(model).__name__, printable(f"{type(exc).__name__}: {why}"[:300]))
                    continue
                self._export_failed[id(model)] = f"{type(exc).__name__}: {why}"
                log.warning("pytorch adaptor: %s %s (%s); FX backend for this model", step,
                            type(model).__name__, printable(self._export_failed[id(model)][:300]))
                return None
        if id(model) not in self._told:
            self._told.add(id(model))
            how = "ILIT_PYTORCH_BACKEND=pt2e" if self._forced == "pt2e" else "the default for static"
            log.info("pytorch adaptor: %s: PT2E backend (%s; torch.export captured it%s): torchao "
                     "X86InductorQuantizer, Inductor int8 kernels; the tuned ops are its Linear/Conv2d modules",
                     type(model).__name__, how, ", strict=True" if strict else "")
        self._exports = {k: v for k, v in self._exports.items() if v[0]() is not None}
        info: Dict[str, Any] = {"inputs": recipe.input_spec(args, kwargs), **({"strict": True} if strict else {})}
        self._exports[id(model)] = (weakref.ref(model), exported, info)
        return exported

    def smoothed_model(self, model: nn.Module, alpha: float, dataloader: Iterable[Any], iterations: int) -> nn.Module:
        """``model`` with SmoothQuant applied at ``alpha`` (statistics from ``iterations`` batches), cached."""
        key = (id(model), float(alpha), int(iterations))
        hit = self._smoothed.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
        groups = smoothquant.find_groups(model, self.analysis(model, False))
        names = [n for g in groups for n in g.linears]
        absmax, ran = smoothquant.input_absmax(model, names, dataloader, iterations)
        self.calibration_batches += ran
        out = smoothquant.smooth(model, groups, absmax, alpha)
        self._smoothed = {k: v for k, v in self._smoothed.items() if v[0]() is not None}
        self._smoothed[key] = (weakref.ref(model), out)
        return out

    def canonical_cfg(self, tune_cfg: TuneCfg) -> TuneCfg:
        """Recipes only change static models: a dynamic or QAT tune_cfg drops its ``recipes``."""
        if tune_cfg.get("recipes") and tune_cfg.get("approach") != STATIC:
            return {k: v for k, v in tune_cfg.items() if k != "recipes"}
        return tune_cfg

    # ---------------------------------------------------------------- quantize
    def quantize(self, tune_cfg: TuneCfg, model: nn.Module, dataloader: Iterable[Any],
                 q_func: Optional[Callable[[Any], Any]] = None) -> nn.Module:
        """A new INT8 model for ``tune_cfg``; ``model`` is never modified."""
        q = self._quantize(tune_cfg, model, dataloader, q_func)  # records how it was built (recipe.record)
        return self._bf16(tune_cfg, self._embeddings(tune_cfg, q))

    def _bf16(self, tune_cfg: TuneCfg, q: nn.Module) -> nn.Module:
        """Run the config's bf16 fallback ops in bfloat16 (in the new model ``q``: modules of FX and dynamic models,
        graph nodes of PT2E ones)."""
        names = bf16_ops(tune_cfg)
        if names and isinstance(q, backend.PT2EModel):
            bf16.convert_graph(q.graph_module, names)
        elif names:
            bf16.convert(q, names)
            keep_off_fast_path(q)
        return q

    def _embeddings(self, tune_cfg: TuneCfg, q: nn.Module) -> nn.Module:
        """Swap the embeddings the config quantizes for int8 weight-only ones (in the new model ``q``)."""
        if isinstance(q, backend.PT2EModel):
            return q
        for name, op in tune_cfg["ops"].items():
            if op.get("op_type") not in ("Embedding", "EmbeddingBag") or not is_quantized(op):
                continue
            try:
                module = get_submodule(q, name)
            except AttributeError:
                continue
            if type(module) in backend.EMBEDDINGS:
                set_submodule(q, name, backend.quantize_embedding(module))
                q._ilit_quantized = True
        return q

    def _quantize(self, tune_cfg: TuneCfg, model: nn.Module, dataloader: Iterable[Any],
                  q_func: Optional[Callable[[Any], Any]] = None) -> nn.Module:
        self.quantize_calls += 1
        approach = tune_cfg["approach"]
        if approach == DYNAMIC:
            return recipe.record(self._dynamic(tune_cfg, model), tune_cfg, "dynamic")
        if approach == QAT and q_func is None:
            raise ValueError("quant_aware_training needs q_func(model), a function that trains the prepared model; "
                             "pass it to tune(..., q_func=...)")
        is_qat = approach == QAT
        alpha = smoothquant.alpha_of(tune_cfg)
        if alpha is not None and approach == STATIC:
            model = self.smoothed_model(model, alpha, dataloader, int(tune_cfg["calibration"]["iterations"]))
        if self._pt2e(approach) and id(model) not in self._export_failed:
            example = batch_inputs(next(iter(dataloader)))
            self._example = example
            exported = self._exported(model, example)
            if exported is not None:
                return self._pt2e_quantize(tune_cfg, model, exported, dataloader)
        elif approach == STATIC:
            self._say_fx(model)
        analysis = self.analysis(model, is_qat)
        if analysis.traceable:
            return recipe.record(self._graph_mode(tune_cfg, model, analysis, dataloader, q_func), tune_cfg, "fx")
        try:
            q = self._graph_mode(tune_cfg, model, analysis, dataloader, q_func)
            with torch.no_grad():
                call_model(q, self._example)
            return recipe.record(q, tune_cfg, "fx")
        except Exception as exc:  # noqa: BLE001 - the split model does not run: quantize its Linears dynamically
            raise_if_interrupted(exc)
            log.warning("pytorch adaptor: the partly FX-quantized %s fails to run (%s: %s); falling back to "
                        "dynamic quantization of its Linear layers", type(model).__name__, type(exc).__name__, exc)
            return recipe.record(self._dynamic(tune_cfg, model, linear_only=True), tune_cfg, "dynamic-linear")

    def rebuild(self, build: Mapping[str, Any], model: nn.Module) -> nn.Module:
        """The quantized model ``quantize`` made for a recorded ``build`` (see :mod:`ilit_pytorch.recipe`), from
        the FP32 ``model`` by the same code path but without calibration data or training: each scale, zero
        point and int8 weight is a placeholder that :func:`serialize.load_model` then overwrites with the saved
        state (PT2E's activation qparams, graph literals, come from the recorded ``build``)."""
        tune_cfg, how = build["tune_cfg"], build["how"]
        approach = tune_cfg.get("approach")
        if approach not in backend.APPROACHES or not isinstance(tune_cfg.get("ops"), dict):
            raise ValueError(f"the recorded tune_cfg has approach {approach!r:.60} and no valid ops")
        known = {name for name, _ in model.named_modules()}
        if how == "fx" and not set(tune_cfg["ops"]) <= known:  # functional ops (add, cat) are named by the analysis
            known |= set(self.analysis(model, approach == QAT).ops)
        unknown = sorted(set(tune_cfg["ops"]) - known)
        if unknown:
            raise ValueError(f"the recorded tune_cfg names {len(unknown)} op(s) this model does not have, e.g. "
                             f"{printable(unknown[0], 80)}")
        if how in ("dynamic", "dynamic-linear"):
            q = self._dynamic(tune_cfg, model, linear_only=how == "dynamic-linear")
        elif how in ("fx", "pt2e"):
            alpha = smoothquant.alpha_of(tune_cfg) if approach == STATIC else None
            if alpha is not None:  # the migrated weights are in the saved state: only the structure matters here
                model = self._smoothed_placeholder(model, alpha)
            with warnings.catch_warnings():  # "must run observer before calling calculate_qparams": placeholders
                warnings.filterwarnings("ignore", message=".*must run observer.*")
                if how == "pt2e":
                    q = self._pt2e_rebuild(build, model)
                else:
                    q = self._graph_mode(tune_cfg, model, self.analysis(model, approach == QAT), None, None,
                                         calibrate=False)
        else:
            raise ValueError(f"unknown build {how!r:.40} (this ilit-pytorch builds fx, pt2e, dynamic and "
                             "dynamic-linear)")
        q = recipe.record(q, tune_cfg, how, **{k: v for k, v in build.items() if k not in ("how", "tune_cfg")})
        q = self._bf16(tune_cfg, self._embeddings(tune_cfg, q))
        return q if isinstance(q, backend.PT2EModel) else q.eval()  # an exported graph refuses eval()

    def _smoothed_placeholder(self, model: nn.Module, alpha: float) -> nn.Module:
        """``model`` migrated by SmoothQuant with unit scales: the structure ``smooth`` gives (a LayerNorm
        without affine parameters gains them), without calibration statistics."""
        groups = smoothquant.find_groups(model, self.analysis(model, False))
        ones = {}
        for g in groups:
            for name in g.linears:
                lin = smoothquant._plain_linear(get_submodule(model, name))
                if lin is not None:
                    ones[name] = torch.ones(lin.in_features)
        return smoothquant.smooth(model, groups, ones, alpha)

    def _pt2e_rebuild(self, build: Mapping[str, Any], model: nn.Module) -> nn.Module:
        """Export ``model`` on zeros of the recorded input shapes, annotate and convert with placeholder
        observers, then write the recorded activation qparams into the graph's quantize/dequantize nodes."""
        missing = backend.pt2e_missing()
        if missing:
            raise ImportError(f"this model was quantized with the PT2E backend; loading it needs torchao: {missing}")
        args, kwargs = recipe.inputs_from_spec(build.get("inputs"))
        cfgs = {name: (op if is_quantized(op) else None)
                for name, op in recipe.minmax_only(build["tune_cfg"])["ops"].items()}
        layout = {name: (op if is_quantized(op) else None) for name, op in build["tune_cfg"]["ops"].items()}
        with eval_mode(model):
            exported = backend.pt2e_export(model, args, kwargs, strict=build.get("strict") is True)
        prepared = backend.pt2e_prepare(exported, cfgs, layout=layout)  # annotated as the tuned model was
        recipe.feed_weight_observers(prepared)
        gm = backend.pt2e_convert(prepared)
        recipe.set_graph_qparams(gm, build.get("qparams"))
        return backend.PT2EModel(gm)

    def _graph_mode(self, tune_cfg: TuneCfg, model: nn.Module, analysis: Analysis,
                    dataloader: Optional[Iterable[Any]], q_func: Optional[Callable[[Any], Any]],
                    calibrate: bool = True) -> nn.Module:
        """Prepare each unit with FX, calibrate (or train), convert, and put the units back in a copy.

        ``calibrate=False`` (for :meth:`rebuild`) skips calibration and training: the observers keep their
        defaults, so the converted model has the right structure and placeholder values."""
        approach = tune_cfg["approach"]
        is_qat = approach == QAT
        if calibrate:
            example = batch_inputs(next(iter(dataloader)))  # type: ignore[arg-type]
            self._example = example
        else:  # histogram/percentile observers cannot convert empty; the structure is the same with min/max
            example = None
            tune_cfg = recipe.minmax_only(tune_cfg)
        q = copy.deepcopy(model).train(is_qat)
        prepared: Dict[str, Any] = {}
        for unit in analysis.units:
            # ops a PT2E capability did not list (add, cat) stay fp32 when FX stands in for it
            entries, any_q = qconfig_entries(
                unit, lambda op: backend.make_qconfig(tune_cfg["ops"].get(op, {}), approach))
            if not any_q:
                continue
            # example inputs only matter to prepare_fx for standalone modules; a unit's own are unknown
            args = as_call(model, example)[0] if unit.prefix == "" and example is not None else ()
            p = backend.prepare(unit.module_in(q), entries, args, is_qat)
            prepared[unit.prefix] = p
            if unit.prefix == "":
                q = p
            else:
                set_submodule(q, unit.prefix, p)
        if not prepared:
            return q.eval()
        keep_off_fast_path(q)
        if not calibrate:
            q.eval()
        elif is_qat:
            q_func(q)  # type: ignore[misc]  # trains the prepared model in place
            q.eval()
        else:
            q.eval()
            self._calibrate(tune_cfg, model, analysis, prepared, q, dataloader)  # type: ignore[arg-type]
        for prefix, p in prepared.items():
            c = backend.convert(p)
            if prefix == "":
                q = c
            else:
                set_submodule(q, prefix, c)
        q.eval()
        q._ilit_quantized = True
        self._functional = {k: v for k, v in self._functional.items() if v[0]() is not None}  # drop dead models
        self._functional[id(q)] = (weakref.ref(q), {op.name: (u.prefix, op) for u in analysis.units
                                                    for op in u.ops.values() if not op.weighted})
        return q

    def _pt2e_quantize(self, tune_cfg: TuneCfg, model: nn.Module, exported: Any,
                       dataloader: Iterable[Any]) -> nn.Module:
        """Annotate the exported graph, calibrate and convert with torchao; no compile (see PT2EModel)."""
        info = self._exports[id(model)][2]
        exported = copy.deepcopy(exported)  # prepare_pt2e rewrites the graph it is given
        cfgs = {name: (op if is_quantized(op) else None) for name, op in tune_cfg["ops"].items()}
        prepared = backend.pt2e_prepare(exported, cfgs)
        iterations = int(tune_cfg["calibration"]["iterations"])
        n = 0
        with torch.no_grad():
            for batch in dataloader:
                if n >= iterations:
                    break
                a, k = as_call(model, batch_inputs(batch))
                prepared(*a, **k)
                n += 1
        self.calibration_batches += n
        gm = backend.pt2e_convert(prepared)
        # the activation qparams are graph literals, not state: recorded with the export's input shapes (and
        # strict=True when the export needed it) for rebuild
        return recipe.record(backend.PT2EModel(gm), tune_cfg, "pt2e", **info, qparams=recipe.graph_qparams(gm))

    def _calibrate(self, tune_cfg: TuneCfg, model: nn.Module, analysis: Analysis, prepared: Dict[str, Any],
                   q: nn.Module, dataloader: Iterable[Any]) -> None:
        """Load cached statistics into ``prepared``'s observers, running the calibration batches only when
        this calibration key (approach, batch count, algorithms) needs statistics not recorded yet.
        Histograms (``kl``, ``percentile``) cost far more than min/max on large activations, so they are
        only recorded once a config asks for them."""
        approach, iterations, algos = calibration_key(tune_cfg)[:3]  # a recipe: the model is its own copy
        key = (id(model), approach, iterations)
        needed = set(stat_kinds(algos))
        entry = self._stats.get(key)
        if entry is None or not needed <= entry[0]:
            kinds = needed | (entry[0] if entry else set())
            stats, ran = collect_stats(model, analysis, dataloader, iterations, sorted(kinds))
            self.calibration_batches += ran
            entry = self._stats[key] = (kinds, stats)
        if not load_stats(prepared, entry[1]):
            log.info("pytorch adaptor: an observer watches a node the cached statistics lack; calibrating this config")
            self.calibration_batches += run_batches(q, dataloader, iterations)

    def _dynamic(self, tune_cfg: TuneCfg, model: nn.Module, linear_only: bool = False) -> nn.Module:
        modules = dict(model.named_modules())
        spec = {}
        for name, op in tune_cfg["ops"].items():
            module = modules.get(name)
            if module is None or backend.dynamic_op_type(module) is None or not is_quantized(op):
                continue
            if linear_only and not isinstance(module, nn.Linear):
                continue
            cfg = {"activation": {"dtype": "uint8"}, "weight": op.get("weight") or {}}
            if cfg["weight"].get("dtype", "fp32") == "fp32":
                continue
            spec[name] = backend.make_qconfig(cfg, DYNAMIC)
        q = backend.dynamic_quantize(model, spec)
        keep_off_fast_path(q)
        q._ilit_quantized = True
        return q

    # ---------------------------------------------------------------- running
    def infer(self, model: Any, inputs: Any) -> Any:
        """One forward pass without autograd, in eval mode; ``model`` is left exactly as it was.

        A model (or submodule) in training mode runs in eval mode here and gets its mode back after:
        in training mode every batch would update the batch-norm running statistics of the user's model
        and drop activations at random, and the baseline would not compare with the int8 models.
        """
        runner = self._runner(model)  # an int8 model of this adaptor: its copy, in eval mode like the model
        self._example = inputs
        if runner is model and isinstance(model, nn.Module):
            known, modules = self._modules
            if known is not model:  # walked once per model, not per batch: infer is what latency measures
                modules = list(model.modules())
                self._modules = (model, modules)
            if not self._warned_train and training_modules(model, modules):
                self._warned_train = True
                log.warning("pytorch adaptor: the model is in training mode; ilit evaluates it in eval mode "
                            "(no dropout, batch-norm running statistics used and not updated) and leaves its "
                            "mode as it was (an eval_func gets it in eval mode too, its modes restored after)")
            with eval_mode(model, modules), torch.inference_mode():
                return self._call(model, inputs)
        with torch.inference_mode():
            return self._call(runner, inputs)

    @staticmethod
    def _call(model: Any, inputs: Any) -> Any:
        """``call_model``, with the structure of the inputs and how they were passed added to any error."""
        try:
            return call_model(model, inputs)
        except Exception as exc:
            args, kwargs = as_call(model, inputs)
            how = (f"{len(args)} positional" if args else "") + (" and " if args and kwargs else "") + (
                f"keywords {', '.join(map(str, kwargs))}" if kwargs else "")
            if hasattr(exc, "add_note"):  # Python 3.11+: shown under the traceback, the message is unchanged
                exc.add_note(f"ilit-pytorch called {type(model).__name__} with {how or 'no inputs'}; "
                             f"the batch's inputs "
                             f"were {describe_inputs(inputs)} (inputs contract: ilit-pytorch README, 'Inputs')")
            raise

    def _runner(self, model: Any) -> Any:
        """The model to run for ``model``: for an int8 model of this adaptor, a copy of it.

        oneDNN int8 convs keep the kernel built for the first input shape they see; tuning runs the
        model on the eval batches, so the model handed back would serve other batch sizes slower
        (~15% at batch 1 on ResNet-18). Running a copy leaves the returned model untouched.
        """
        if not getattr(model, "_ilit_quantized", False):
            return model
        if isinstance(model, backend.PT2EModel):
            # accuracy: the reference q/dq graph (no compile per trial). Timing (only candidates that met the
            # goal are timed): the compiled model the user runs, compiled once per candidate and kept in it
            if self._timing and backend.pt2e_timing() == "compiled":
                return model.runner()
            return model.graph_module
        ref, shadow = self._shadow
        if ref is None or ref() is not model:
            shadow = copy.deepcopy(model)
            self._shadow = (weakref.ref(model), shadow)
        return shadow

    def inspect_tensor(self, model: Any, dataloader: Iterable[Any], op_list: Sequence[str],
                       iteration_list: Sequence[int]) -> Dict[str, List[np.ndarray]]:
        """Outputs of the named ops on the chosen batches, from an fp32 model (its fused graph, so a
        conv's output is after its folded batch-norm and fused relu, as in the int8 model) or an int8 one."""
        wanted = set(op_list)
        out: Dict[str, List[np.ndarray]] = {name: [] for name in op_list}
        current: Dict[str, np.ndarray] = {}
        handles = []
        swapped: List[Tuple[str, nn.Module]] = []
        fp32 = not getattr(model, "_ilit_quantized", False) and self._approach() != DYNAMIC
        if isinstance(model, backend.PT2EModel):  # its reference graph, node by node
            gm = model.graph_module
            nodes = backend.pt2e_op_nodes(gm, wanted)

            def record_pt2e(name: str, value: Any) -> None:
                current[name] = value.float().numpy().copy()

            runner = backend.PT2ERecorder(gm, nodes, record_pt2e)
        elif fp32:
            analysis = self.analysis(model, False)
            node_to_op = {u.prefix: {op.out: op.name for op in u.ops.values() if op.name in wanted}
                          for u in analysis.units}

            def make_callback(prefix: str) -> Callable[[str, Any], None]:
                names = node_to_op.get(prefix, {})

                def record(node: str, value: Any) -> None:
                    if node in names:
                        current[names[node]] = value.float().numpy().copy()
                return record
            runner = tapped_model(model, analysis, make_callback)
        else:
            modules = dict(model.named_modules())
            for name in op_list:
                # a leaf unit or a SmoothedLinear holds the op as .m (a converted graph keeps only a bare parent)
                module = modules.get(f"{name}.m") or modules.get(name)
                if module is None:
                    continue

                def hook(_m: Any, _i: Any, output: Any, name: str = name) -> None:
                    t = output[0] if isinstance(output, tuple) else output
                    current[name] = (t.dequantize() if t.is_quantized else t).float().numpy().copy()
                handles.append(module.register_forward_hook(hook))
            runner = model
            hit = self._functional.get(id(model))
            functional = hit[1] if hit is not None and hit[0]() is model else {}
            by_unit: Dict[str, Dict[str, str]] = {}
            for name in op_list:
                if name in functional:
                    prefix, op = functional[name]
                    node = find_functional(get_submodule(model, prefix), op)
                    if node is not None:
                        by_unit.setdefault(prefix, {})[node] = name
            for prefix, names in by_unit.items():
                def record(node: str, value: Any, names: Dict[str, str] = names) -> None:
                    if node in names:
                        real = value.dequantize() if value.is_quantized else value
                        current[names[node]] = real.float().numpy().copy()
                tap = Tap(get_submodule(model, prefix), record)
                if prefix == "":
                    runner = tap
                else:
                    swapped.append((prefix, get_submodule(model, prefix)))
                    set_submodule(model, prefix, tap)
        try:
            with torch.no_grad():
                for _, batch in selected_batches(dataloader, iteration_list):
                    current.clear()
                    call_model(runner, batch_inputs(batch))
                    for name in op_list:
                        if name in current:
                            out[name].append(current[name])
        finally:
            for h in handles:
                h.remove()
            for prefix, module in swapped:
                set_submodule(model, prefix, module)
        return out

    # ---------------------------------------------------------------- files
    def save(self, model: Any, path: str) -> None:
        """Write the model's tensors and its recipe (data only, see :mod:`ilit_pytorch.serialize`) into ``path``."""
        save_model(model, path, state=self._state_module(model))

    def load(self, path: str, model: Optional[nn.Module] = None, max_bytes: Optional[int] = None) -> Any:
        """The model saved in ``path``, rebuilt from the FP32 ``model`` it was quantized from (required) and the
        saved tensors; runs no code from the files. ``max_bytes`` caps the state file (default: see
        :func:`serialize.load_limit`)."""
        return load_model(path, model, self.rebuild, max_bytes, state_of=self._state_module)

    @staticmethod
    def _state_module(model: Any) -> Any:
        """The module whose state dict holds a model's tensors: a PT2E model's graph (its wrapper lists it twice)."""
        return model.graph_module if isinstance(model, backend.PT2EModel) else model

    def fingerprint(self, model: Any) -> str:
        """A hash of the class and every parameter and buffer (cheaper than saving the model)."""
        h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        for name, t in model.state_dict().items():
            if not isinstance(t, torch.Tensor):
                h.update(f"{name}={t!r}".encode())
                continue
            t = t.detach()
            t = t.int_repr() if t.is_quantized else t
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy() if t.numel() else b"")
        return h.hexdigest()
