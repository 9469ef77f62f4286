"""The tuning space: the adaptor's capability intersected with the YAML's choices.

The adaptor's ``query_fw_capability(model)`` returns (the documented capability structure)::

    {
      "approaches": ["post_training_static_quant", ...],       # optional; default: static only
      "op_wise": {                                             # ops in the order they run
        ("features.0", "Conv2d"): {
          "weight":     {"dtype": ["int8", "fp32"], "scheme": ["sym", "asym"],
                         "granularity": ["per_channel", "per_tensor"], "algorithm": ["minmax"]},
          "activation": {"dtype": ["uint8", "fp32"], "scheme": ["asym", "sym"],
                         "granularity": ["per_tensor"], "algorithm": ["minmax", "kl", "percentile"]},
        },
        ...
      },
      "model_wise": {"weight": {...}, "activation": {...}},   # optional; default: union of op_wise
      "edges": [["features.0", "features.2"], ...],           # optional; see below
      "recipes": {"smooth_quant": {"alpha": [0.5, 0.75]}},     # optional: model-wise recipes and their values
    }

``edges`` lists [producer, consumer] pairs of op names: the consumer reads a tensor the producer
writes, possibly through ops that are not tunable (ReLU, reshape, ...). Fallback strategies use it to
find ops that interact (an outlier tensor between two ops is quantized if either op is). Without it
(older adaptors) the ops are taken as a chain in the order they run.

``fp32`` in an op's dtype list means the op can fall back. ``bf16`` in both its weight and activation
dtype lists (in the activation list for an op without weights) means it can fall back to bfloat16
instead, which adaptors offer where the CPU computes in bf16 natively (AMX, AVX512-BF16). A choice
mixing a quantized dtype with fp32 (or bf16) across weight and activation is dropped, as upstream iLiT did.
Fallback dtypes are not model-wise choices: every model-wise config is fully quantized.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .config import Config, TensorQuantConfig
from .errors import ConfigError
from .tune_cfg import FALLBACK_DTYPES, STATIC, TENSOR_FIELDS, TuneCfg, is_quantized

__all__ = ["TuningSpace", "OpKey"]

OpKey = Tuple[str, str]
FP32 = {"dtype": "fp32"}
BF16 = {"dtype": "bf16"}


def _intersect(supported: Sequence[str], wanted: Optional[Sequence[str]]) -> List[str]:
    """Keep the adaptor's values the YAML allows, in the YAML's order of preference."""
    if wanted is None:
        return list(supported)
    return [w for w in wanted if w in supported]


def _tensor_choices(cap: Mapping[str, Sequence[str]], *wanted: TensorQuantConfig,
                    path: str = "", strict: bool = False) -> Dict[str, List[str]]:
    """The quantized choices per field, narrowed by each ``wanted`` in turn."""
    out: Dict[str, List[str]] = {}
    for fld in TENSOR_FIELDS:
        vals = list(cap.get(fld, []))
        if fld == "dtype":
            vals = [v for v in vals if v not in FALLBACK_DTYPES]
        for w in wanted:
            want = w.get(fld)
            if fld == "dtype" and want is not None:
                want = tuple(v for v in want if v not in FALLBACK_DTYPES) or None
            narrowed = _intersect(vals, want)
            if want is not None and vals and not narrowed:
                if strict:
                    raise ConfigError(f"{path}.{fld}",
                                      f"none of {list(want)} is supported here; the framework supports {vals}")
                continue  # an op that cannot honour a global choice keeps its own, rather than silently going fp32
            vals = narrowed
        out[fld] = vals
    return out


def _combos(choices: Mapping[str, Sequence[str]]) -> List[Dict[str, str]]:
    if not all(choices.get(f) for f in TENSOR_FIELDS):
        return []
    return [dict(zip(TENSOR_FIELDS, c)) for c in itertools.product(*(choices[f] for f in TENSOR_FIELDS))]


@dataclass
class TuningSpace:
    """Every op's choices plus the global (model-wise) choices, built from capability and config."""

    approach: str
    iterations: Tuple[int, ...]
    op_types: Dict[str, str]
    op_choices: Dict[str, List[Dict[str, Any]]]  # quantized choices first, then bf16 and fp32 if allowed
    global_choices: List[Dict[str, Dict[str, str]]]
    forced_fallback: Tuple[str, ...] = ()
    #: [producer, consumer] op pairs from the adaptor; empty = unknown, the ops are taken as a chain
    edges: Tuple[Tuple[str, str], ...] = ()
    #: model-wise recipe choices (``tune_cfg["recipes"]`` values); ``None``, no recipe, is always first
    recipes: List[Optional[Dict[str, Any]]] = field(default_factory=lambda: [None])
    _op_tensor: Dict[str, Dict[str, Dict[str, List[str]]]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, capability: Mapping[str, Any], config: Config) -> "TuningSpace":
        """Intersect ``capability`` with ``config``; raise ConfigError when nothing is left."""
        approaches = list(capability.get("approaches", [STATIC]))
        approach = config.quantization.approach
        if approach not in approaches:
            raise ConfigError("quantization.approach",
                              f"{approach!r} is not supported by this adaptor; it supports {approaches}")
        op_wise = capability.get("op_wise")
        if not op_wise:
            raise ConfigError("", "the adaptor found no quantizable op in this model; nothing to tune")
        op_types: Dict[str, str] = {}
        for key in op_wise:
            name, op_type = key
            op_types[name] = op_type

        overrides = config.tuning.ops
        unknown = [n for n in overrides if n not in op_types]
        if unknown:
            shown = ", ".join(list(op_types)[:20]) + (" ..." if len(op_types) > 20 else "")
            raise ConfigError(f"tuning.ops.{unknown[0]}", f"no such op in the model; its quantizable ops are: {shown}")

        qw, qa = config.quantization.weight, config.quantization.activation
        model_wise = capability.get("model_wise") or _union(op_wise.values())
        g_weight = _tensor_choices(model_wise.get("weight", {}), qw, path="quantization.weight", strict=True)
        g_act = _tensor_choices(model_wise.get("activation", {}), qa, path="quantization.activation", strict=True)
        if not _combos(g_act):
            raise ConfigError("quantization.activation", "no quantized choice is left; the framework supports "
                              f"{dict(model_wise.get('activation', {}))}")
        weight_combos: List[Optional[Dict[str, str]]] = list(_combos(g_weight)) or [None]
        global_choices = [{"weight": w, "activation": a} if w else {"activation": a}
                          for w in weight_combos for a in _combos(g_act)]

        op_choices: Dict[str, List[Dict[str, Any]]] = {}
        op_tensor: Dict[str, Dict[str, Dict[str, List[str]]]] = {}
        forced: List[str] = []
        for (name, _type), cap in op_wise.items():
            ov = overrides.get(name)
            has_weight = "weight" in cap
            w_ch = _tensor_choices(cap.get("weight", {}), qw) if has_weight else {}
            a_ch = _tensor_choices(cap.get("activation", {}), qa)
            if ov:  # explicit per-op narrowing is strict
                w_ch = _tensor_choices(w_ch, ov.weight,
                                       path=f"tuning.ops.{name}.weight", strict=True) if has_weight else {}
                a_ch = _tensor_choices(a_ch, ov.activation, path=f"tuning.ops.{name}.activation", strict=True)
            op_tensor[name] = {"weight": w_ch, "activation": a_ch}
            can_fp32, can_bf16 = (dt in cap.get("activation", {}).get("dtype", []) and (
                not has_weight or dt in cap["weight"].get("dtype", [])) for dt in ("fp32", "bf16"))
            choices: List[Dict[str, Any]] = []
            if not (ov and ov.fallback):
                for a in _combos(a_ch):
                    if has_weight:
                        choices += [{"weight": w, "activation": a} for w in _combos(w_ch)]
                    else:
                        choices.append({"activation": a})
            if ov and ov.fallback:
                if not can_fp32:
                    raise ConfigError(f"tuning.ops.{name}", "this op cannot run in fp32 with this adaptor")
                forced.append(name)
            if can_bf16 and can_fp32 and choices:  # a cheaper fallback than fp32 (never for an op forced to fp32)
                choices.append(_float(has_weight, BF16))
            if can_fp32 or not choices:
                choices.append(_float(has_weight, FP32))
            op_choices[name] = choices
        return cls(approach=approach, iterations=tuple(config.calibration.iterations), op_types=op_types,
                   op_choices=op_choices, global_choices=global_choices, forced_fallback=tuple(forced),
                   edges=_edges(capability.get("edges"), op_types),
                   recipes=_recipe_choices(capability.get("recipes") or {}), _op_tensor=op_tensor)

    # ------------------------------------------------------------------ queries
    @property
    def ops(self) -> List[str]:
        """Op names in model order."""
        return list(self.op_types)

    @property
    def graph_known(self) -> bool:
        """Whether the adaptor reported who feeds whom (else :meth:`producers` assumes a chain)."""
        return bool(self.edges)

    def producers(self, op: str) -> List[str]:
        """Ops whose output ``op`` reads (the op before it in model order when the graph is unknown)."""
        if self.edges:
            return [p for p, c in self.edges if c == op]
        ops = self.ops
        i = ops.index(op)
        return ops[i - 1:i] if i > 0 else []

    def consumers(self, op: str) -> List[str]:
        """Ops reading ``op``'s output (the op after it in model order when the graph is unknown)."""
        if self.edges:
            return [c for p, c in self.edges if p == op]
        ops = self.ops
        i = ops.index(op)
        return ops[i + 1:i + 2]

    def neighbourhood(self, op: str) -> List[str]:
        """``op`` with its producers and consumers, in model order: the ops sharing a tensor with it."""
        near = {op, *self.producers(op), *self.consumers(op)}
        return [n for n in self.ops if n in near]

    def downstream(self, op: str) -> List[str]:
        """Every op that reads, directly or through other ops, what ``op`` writes (model order)."""
        seen = set()
        stack = [op]
        while stack:
            for n in self.consumers(stack.pop()):
                if n not in seen and n != op:
                    seen.add(n)
                    stack.append(n)
        return [n for n in self.ops if n in seen]

    def has_weight(self, op: str) -> bool:
        """Whether ``op`` has a weight (conv, linear); ops without one (pooling, add, ...) pass tensors on."""
        return any("weight" in c for c in self.op_choices[op])

    def segment(self, op: str) -> List[str]:
        """``op`` and every op its output reaches through ops without weights, up to the next weighted ops
        (both ways through an op without weights), in model order.

        These ops all quantize the same values: an outlier in ``op``'s output stays in a max-pool's or a
        flatten's quantized output, and an add's inputs share its output's range.
        """
        group = {op}
        stack = [op]
        while stack:
            name = stack.pop()
            # a weighted op's own output only; an op without weights passes its input's values on
            reach = self.consumers(name) + ([] if self.has_weight(name) else self.producers(name))
            for n in reach:
                if n not in group:
                    group.add(n)
                    if not self.has_weight(n):
                        stack.append(n)
        return [n for n in self.ops if n in group]

    def can_fallback(self, op: str) -> bool:
        return any(c["activation"]["dtype"] == "fp32" for c in self.op_choices[op])

    def can_bf16(self, op: str) -> bool:
        """Whether ``op`` may fall back to bf16 (the adaptor offers it for this op)."""
        return any(c["activation"]["dtype"] == "bf16" for c in self.op_choices[op])

    def fallback_dtypes(self, ops: Iterable[str]) -> List[str]:
        """The fallback dtypes to search, cheapest first: ``["bf16", "fp32"]`` when any of ``ops`` may fall back
        to bf16, else ``["fp32"]``."""
        return ["bf16", "fp32"] if any(self.can_bf16(op) for op in ops) else ["fp32"]

    def fallback_choice(self, op: str, dtype: str = "fp32") -> Dict[str, Any]:
        """``op``'s fallback entry: its bf16 one when ``dtype`` is bf16 and the op offers it, else fp32."""
        if dtype == "bf16":
            for c in self.op_choices[op]:
                if c["activation"]["dtype"] == "bf16":
                    return c
        return self.op_choices[op][-1]

    def fallback_candidates(self, tune_cfg: TuneCfg) -> List[str]:
        """Ops quantized in ``tune_cfg`` that could fall back to fp32, in model order."""
        return [n for n, op in tune_cfg["ops"].items() if is_quantized(op) and self.can_fallback(n)]

    # ------------------------------------------------------------------ config makers
    def _apply_global(self, name: str, choice: Mapping[str, Mapping[str, str]]) -> Dict[str, Any]:
        quantized = [c for c in self.op_choices[name] if is_quantized(c)]
        if name in self.forced_fallback or not quantized:
            return dict(self.op_choices[name][-1])
        out: Dict[str, Any] = {}
        for part in ("weight", "activation"):
            if part not in quantized[0]:
                continue
            allowed = self._op_tensor[name][part]
            want = choice.get(part, {})
            out[part] = {f: (want[f] if want.get(f) in allowed[f] else allowed[f][0]) for f in TENSOR_FIELDS}
        return out

    def make_config(self, choice: Mapping[str, Mapping[str, str]], iterations: int,
                    fallback: Iterable[str] = (), op_cfgs: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    recipes: Optional[Mapping[str, Any]] = None) -> TuneCfg:
        """A full tune_cfg: ``choice`` applied to every op, then ``op_cfgs`` and ``fallback`` on top;
        ``recipes`` (e.g. ``{"smooth_quant": {"alpha": 0.5}}``) is recorded only when given."""
        fb = set(fallback)
        ops: Dict[str, Any] = {}
        for name, op_type in self.op_types.items():
            body: Mapping[str, Any]
            if name in fb and self.can_fallback(name):
                body = self.op_choices[name][-1]
            elif op_cfgs and name in op_cfgs:
                body = op_cfgs[name]
            else:
                body = self._apply_global(name, choice)
            ops[name] = {"op_type": op_type, **{k: dict(v) for k, v in body.items()}}
        cfg: TuneCfg = {"approach": self.approach, "calibration": {"iterations": int(iterations)}, "ops": ops}
        if recipes:
            cfg["recipes"] = json.loads(json.dumps(dict(recipes)))
        return cfg

    def model_wise_configs(self) -> List[TuneCfg]:
        """Every global combination for every calibration batch count, most-preferred first; each one
        without a recipe, then with each recipe choice, so a recipe is tried right after its plain config."""
        out = []
        for it in self.iterations:
            for choice in self.global_choices:
                for recipe in self.recipes:
                    cfg = self.make_config(choice, it, recipes=recipe)
                    if cfg not in out:
                        out.append(cfg)
        return out

    def with_fallback(self, tune_cfg: TuneCfg, ops: Iterable[str], dtype: str = "fp32") -> TuneCfg:
        """A copy of ``tune_cfg`` with ``ops`` falling back: to fp32, or with ``dtype="bf16"`` to bf16 where
        the op offers it (fp32 where it does not)."""
        new = {"approach": tune_cfg["approach"], "calibration": dict(tune_cfg["calibration"]),
               "ops": {n: dict(v) for n, v in tune_cfg["ops"].items()}}
        if tune_cfg.get("recipes"):
            new["recipes"] = json.loads(json.dumps(tune_cfg["recipes"]))
        for name in ops:
            if self.can_fallback(name):
                new["ops"][name] = {"op_type": self.op_types[name], **self.fallback_choice(name, dtype)}
        return new


def _edges(raw: Any, op_types: Mapping[str, str]) -> Tuple[Tuple[str, str], ...]:
    """The adaptor's [producer, consumer] pairs between known ops, deduplicated, in the order given."""
    if not raw:
        return ()
    out: List[Tuple[str, str]] = []
    for pair in raw:
        try:
            producer, consumer = pair
        except (TypeError, ValueError):
            raise ValueError(f"capability['edges'] must hold [producer, consumer] pairs, got {pair!r}") from None
        edge = (str(producer), str(consumer))
        if edge[0] in op_types and edge[1] in op_types and edge[0] != edge[1] and edge not in out:
            out.append(edge)
    return tuple(out)


def _recipe_choices(recipes: Mapping[str, Mapping[str, Sequence[Any]]]) -> List[Optional[Dict[str, Any]]]:
    """``None`` (no recipe), then one choice per recipe and value: ``{"smooth_quant": {"alpha": [0.5, 0.75]}}``
    gives ``[None, {"smooth_quant": {"alpha": 0.5}}, {"smooth_quant": {"alpha": 0.75}}]``."""
    out: List[Optional[Dict[str, Any]]] = [None]
    for name, params in recipes.items():
        keys = list(params)
        for values in itertools.product(*(params[k] for k in keys)):
            out.append({name: dict(zip(keys, values))})
    return out


def _float(has_weight: bool, dtype: Mapping[str, str]) -> Dict[str, Any]:
    return {"weight": dict(dtype), "activation": dict(dtype)} if has_weight else {"activation": dict(dtype)}


def _union(caps: Iterable[Mapping[str, Any]]) -> Dict[str, Dict[str, List[str]]]:
    out: Dict[str, Dict[str, List[str]]] = {"weight": {}, "activation": {}}
    for cap in caps:
        for part in ("weight", "activation"):
            for fld, vals in cap.get(part, {}).items():
                dst = out[part].setdefault(fld, [])
                dst.extend(v for v in vals if v not in dst)
    return out
