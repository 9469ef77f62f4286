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

An op whose activation dtype is ``fp32`` falls back: it must run in fp32 in the quantized model.
Ops without weights (add, pooling, ...) have no ``weight`` entry. A quantized tensor always has all
four fields; a fallback tensor only ``dtype``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Tuple

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


def is_quantized(op_cfg: Mapping[str, Any]) -> bool:
    """Whether one op entry of a tune_cfg is quantized (its activation, or its weight, is not fp32)."""
    act = op_cfg.get("activation", {}).get("dtype", "fp32")
    weight = op_cfg.get("weight", {}).get("dtype", "fp32")
    return act != "fp32" or weight != "fp32"


def quantized_ops(tune_cfg: Mapping[str, Any]) -> List[str]:
    """Names of the ops the config quantizes, in model order."""
    return [name for name, op in tune_cfg["ops"].items() if is_quantized(op)]


def fallback_ops(tune_cfg: Mapping[str, Any]) -> List[str]:
    """Names of the ops the config keeps in fp32, in model order."""
    return [name for name, op in tune_cfg["ops"].items() if not is_quantized(op)]


def calibration_key(tune_cfg: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What calibration statistics depend on: approach, batch count and each op's activation algorithm.

    Two configs with the same key can share collected statistics; adaptors cache on it.
    """
    algos = tuple(sorted({op["activation"].get("algorithm", "minmax")
                          for op in tune_cfg["ops"].values() if is_quantized(op) and "activation" in op}))
    return (tune_cfg.get("approach"), int(tune_cfg["calibration"]["iterations"]), algos)


def cfg_fingerprint(tune_cfg: Mapping[str, Any]) -> str:
    """A stable hash of a tune_cfg, so the same config is never evaluated twice."""
    blob = json.dumps(tune_cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _short(t: Mapping[str, Any]) -> str:
    if t.get("dtype", "fp32") == "fp32":
        return "fp32"
    gran = {"per_channel": "pc", "per_tensor": "pt"}.get(t.get("granularity", ""), t.get("granularity", ""))
    return f"{t['dtype']}/{t.get('scheme')}/{gran}/{t.get('algorithm')}"


def describe(tune_cfg: Mapping[str, Any], max_names: int = 4) -> str:
    """One human-readable line: what is quantized (and how, when uniform) and what falls back."""
    q = quantized_ops(tune_cfg)
    fb = fallback_ops(tune_cfg)
    kinds = sorted({(_short(tune_cfg["ops"][n].get("weight", {"dtype": "fp32"})),
                     _short(tune_cfg["ops"][n].get("activation", {"dtype": "fp32"}))) for n in q})
    how = "mixed" if len(kinds) > 1 else (f"w={kinds[0][0]} a={kinds[0][1]}" if kinds else "-")
    text = f"calib={tune_cfg['calibration']['iterations']} int8 ops={len(q)} [{how}]"
    if fb:
        names = ", ".join(fb[:max_names]) + (f", +{len(fb) - max_names} more" if len(fb) > max_names else "")
        text += f" fp32 fallback={len(fb)} ({names})"
    return text
