"""The ``tune_cfg``: the JSON-serializable recipe an adaptor quantizes with (public API).

It is exactly what ``history.json`` stores for each trial. Third-party adaptors code against it::

    {
      "approach": "post_training_static_quant",   # or post_training_dynamic_quant, quant_aware_training
      "calibration": {"iterations": 10},          # q_dataloader batches to calibrate on
      "ops": {                                    # every op the adaptor reported, in model order
        "features.0": {
          "op_type": "Conv2d",
          "weight":     {"dtype": "int8", "scheme": "sym", "granularity": "per_channel", "algorithm": "minmax"},
          "activation": {"dtype": "uint8", "scheme": "asym", "granularity": "per_tensor", "algorithm": "kl"}
        },
        "classifier": {"op_type": "Linear", "weight": {"dtype": "fp32"}, "activation": {"dtype": "fp32"}}
      }
    }

Optional, model-wise: ``"recipes": {"smooth_quant": {"alpha": 0.5}}``, transformations the adaptor
applies to the FP32 model before quantizing (offered in the capability's ``recipes``, searched like
calibration algorithms). A tune_cfg without ``recipes`` (every one written before recipes existed)
means no recipe, so old history files, their fingerprints and resume are unchanged.
``smooth_quant`` (ilit-pytorch): SmoothQuant's per-channel migration of activation outliers into the
Linear weights, ``alpha`` in [0, 1] the share of the range moved.

An op whose activation dtype is ``fp32`` falls back: it must run in fp32 in the quantized model.
An op whose dtypes are ``bf16`` falls back to bfloat16 instead (weights and computation in bf16, the
tensors around it fp32): offered only where the adaptor's capability lists ``bf16`` for that op
(CPUs with AMX or AVX512-BF16). Both are *fallback* dtypes: :func:`is_quantized` is false for them.
Ops without weights (add, pooling, ...) have no ``weight`` entry. A quantized tensor always has all
four fields; a fallback tensor only ``dtype``. A tune_cfg without bf16 ops is exactly what it was
before bf16 existed, so old histories, their fingerprints and resume are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Tuple

from .text import printable

__all__ = [
    "STATIC",
    "DYNAMIC",
    "QAT",
    "APPROACHES",
    "TENSOR_FIELDS",
    "TuneCfg",
    "is_quantized",
    "quantized_ops",
    "fallback_ops",
    "bf16_ops",
    "is_bf16",
    "FALLBACK_DTYPES",
    "calibration_key",
    "cfg_fingerprint",
    "describe",
]

TuneCfg = Dict[str, Any]

#: the values of a tune_cfg's ``approach`` (and of the YAML's ``quantization.approach``)
STATIC = "post_training_static_quant"
DYNAMIC = "post_training_dynamic_quant"
QAT = "quant_aware_training"
APPROACHES = (STATIC, DYNAMIC, QAT)

#: the fields of a quantized tensor's entry (``weight`` or ``activation``), in the order tuning varies them
TENSOR_FIELDS = ("dtype", "scheme", "granularity", "algorithm")

#: the dtypes an op falls back to (it is not quantized): fp32, and bf16 where the adaptor offers it
FALLBACK_DTYPES = ("fp32", "bf16")


def is_quantized(op_cfg: Mapping[str, Any]) -> bool:
    """Whether one op entry of a tune_cfg is quantized (its activation, or its weight, is not fp32 or bf16)."""
    act = op_cfg.get("activation", {}).get("dtype", "fp32")
    weight = op_cfg.get("weight", {}).get("dtype", "fp32")
    return act not in FALLBACK_DTYPES or weight not in FALLBACK_DTYPES


def is_bf16(op_cfg: Mapping[str, Any]) -> bool:
    """Whether one op entry falls back to bf16 (its activation dtype is bf16)."""
    return op_cfg.get("activation", {}).get("dtype") == "bf16"


def quantized_ops(tune_cfg: Mapping[str, Any]) -> List[str]:
    """Names of the ops the config quantizes, in model order."""
    return [name for name, op in tune_cfg["ops"].items() if is_quantized(op)]


def fallback_ops(tune_cfg: Mapping[str, Any]) -> List[str]:
    """Names of the ops the config does not quantize (kept in fp32, or bf16), in model order."""
    return [name for name, op in tune_cfg["ops"].items() if not is_quantized(op)]


def bf16_ops(tune_cfg: Mapping[str, Any]) -> List[str]:
    """Names of the ops the config falls back to bf16, in model order (a subset of :func:`fallback_ops`)."""
    return [name for name, op in tune_cfg["ops"].items() if not is_quantized(op) and is_bf16(op)]


def calibration_key(tune_cfg: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What calibration statistics depend on: approach, batch count and each op's activation algorithm.

    Two configs with the same key can share collected statistics; adaptors cache on it.
    """
    algos = tuple(sorted({op["activation"].get("algorithm", "minmax")
                          for op in tune_cfg["ops"].values() if is_quantized(op) and "activation" in op}))
    key: Tuple[Any, ...] = (tune_cfg.get("approach"), int(tune_cfg["calibration"]["iterations"]), algos)
    if tune_cfg.get("recipes"):  # a recipe changes the activations the statistics are taken from
        key += (json.dumps(tune_cfg["recipes"], sort_keys=True),)
    return key


def cfg_fingerprint(tune_cfg: Mapping[str, Any]) -> str:
    """A stable hash of a tune_cfg, so the same config is never evaluated twice."""
    blob = json.dumps(tune_cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _short(t: Mapping[str, Any]) -> str:
    if t.get("dtype", "fp32") in FALLBACK_DTYPES:
        return str(t.get("dtype", "fp32"))
    gran = {"per_channel": "pc", "per_tensor": "pt"}.get(t.get("granularity", ""), t.get("granularity", ""))
    return f"{t['dtype']}/{t.get('scheme')}/{gran}/{t.get('algorithm')}"


def _uniform(values: List[str]) -> str:
    """The one value, or each distinct value with its count (most common first): ``{a x40, b x9}``."""
    counts: Dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    if len(counts) == 1:
        return values[0]
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return "{" + ", ".join(f"{v} x{n}" for v, n in ranked[:3]) + (", ..." if len(ranked) > 3 else "") + "}"


def describe(tune_cfg: Mapping[str, Any], max_names: int = 4) -> str:
    """One human-readable line: what is quantized and how (weights and activations apart, each distinct choice
    with its op count when they differ), the recipes, and what falls back to bf16 and to fp32."""
    q = quantized_ops(tune_cfg)
    half = bf16_ops(tune_cfg)
    fb = [n for n in fallback_ops(tune_cfg) if n not in half]
    weights = [_short(tune_cfg["ops"][n]["weight"]) for n in q if "weight" in tune_cfg["ops"][n]]
    acts = [_short(tune_cfg["ops"][n].get("activation", {"dtype": "fp32"})) for n in q]
    how = " ".join(f"{k}={_uniform(v)}" for k, v in (("w", weights), ("a", acts)) if v) or "-"
    text = f"calib={tune_cfg['calibration']['iterations']} int8 ops={len(q)} [{how}]"
    for name, params in sorted((tune_cfg.get("recipes") or {}).items()):
        text += f" {name}(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    for dtype, ops in (("bf16", half), ("fp32", fb)):
        if ops:
            # op names come from the model (or a resume file): escaped, so a name cannot forge log lines or rows
            names = ", ".join(printable(n, 120) for n in ops[:max_names]) + (
                f", +{len(ops) - max_names} more" if len(ops) > max_names else "")
            text += f" {dtype} fallback={len(ops)} ({names})"
    return text
