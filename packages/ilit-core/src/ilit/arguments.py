"""The checks on ``tune()``'s arguments, run before any calibration, and the description of a batch in errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

from .config import Config
from .errors import ConfigError
from .tune_cfg import QAT, STATIC

__all__ = ["check_arguments", "check_loader", "describe_inputs"]


def check_arguments(cfg: Config, q_dataloader: Any, q_func: Any, eval_dataloader: Any, eval_func: Any,
                    postprocess: Any = None) -> None:
    """Refuse bad arguments to ``tune`` before any work, each with what to pass instead (the loaders themselves
    are checked by :func:`check_loader`, which also gives their first batch)."""
    if eval_func is None and eval_dataloader is None:
        raise ValueError("tune() needs eval_dataloader (with tuning.metric in the config) or eval_func(model) -> float")
    if eval_func is not None and eval_dataloader is not None:
        raise ValueError("tune() got both eval_func and eval_dataloader; give one: eval_func(model) -> float, "
                         "or eval_dataloader with tuning.metric in the config")
    if eval_func is not None and not callable(eval_func):
        raise ValueError(f"eval_func must be a function model -> float, got {type(eval_func).__name__}")
    if postprocess is not None and not callable(postprocess):
        raise ValueError(f"postprocess must be a function outputs -> metric input, got {type(postprocess).__name__}")
    if postprocess is not None and eval_func is not None:
        raise ValueError("postprocess applies to the model outputs ilit feeds tuning.metric with eval_dataloader; "
                         "with eval_func, post-process inside your function (or pass eval_dataloader instead)")
    if q_func is not None and not callable(q_func):
        raise ValueError(f"q_func must be a function taking the model, got {type(q_func).__name__}")
    if eval_func is None and cfg.tuning.metric is None:
        raise ConfigError("tuning.metric", "an eval_dataloader needs a metric, e.g. 'metric: {topk: 1}'; "
                          "or pass eval_func instead")
    if q_dataloader is None:
        raise ValueError("tune() needs q_dataloader, an iterable of (inputs, labels) batches for calibration")
    if cfg.quantization.approach == QAT and q_func is None:
        raise ValueError(f"quantization.approach {QAT} needs q_func(model), your training loop, "
                         f"which ilit calls on each prepared model; pass q_func or use {STATIC}")


def check_loader(loader: Any, name: str) -> Any:
    """The first batch of a usable loader; an empty or one-shot loader is refused before any calibration.

    A loader is iterated once per trial, so a one-shot iterator (a generator) would be empty from trial 2 on.
    """
    if isinstance(loader, Iterator):
        raise ValueError(f"{name} is a one-shot {type(loader).__name__}: ilit iterates it once per trial, so it would "
                         "be empty after the first; pass a list of batches or a re-iterable loader "
                         "(torch DataLoader, tf.data.Dataset, gluon DataLoader)")
    try:
        return next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} yielded no batches; give it at least one (inputs, labels) batch") from None
    except TypeError as exc:
        raise ValueError(f"{name} must be an iterable of (inputs, labels) batches, got "
                         f"{type(loader).__name__}: {exc}") from None


def describe_inputs(value: Any, depth: int = 0, limit: int = 12) -> str:
    """A short structural description of a batch, e.g. ``dict{input_ids: int64[32, 128]}``, for error messages."""
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())
        inner = ", ".join(f"{k}: {describe_inputs(v, depth + 1)}" for k, v in items[:limit])
        return f"dict{{{inner}{', ...' if len(items) > limit else ''}}}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe_inputs(v, depth + 1) for v in value[:limit])
        return f"{type(value).__name__}({inner}{', ...' if len(value) > limit else ''})"
    shape: Optional[Any] = getattr(value, "shape", None)
    if shape is not None:
        dtype = str(getattr(value, "dtype", "")).replace("torch.", "").replace("<dtype: '", "").rstrip("'>")
        return f"{type(value).__name__} {dtype}[{', '.join('?' if d is None else str(d) for d in tuple(shape))}]"
    return type(value).__name__
