"""``mse``: model-wise tuning, then fp32 fallback of the ops whose quantized outputs drift most.

After Basic's model-wise phase, the best model-wise config is quantized once more and
``inspect_tensor`` collects every op's outputs on a few calibration batches, from the FP32 model
and from the quantized one. Ops are then fallen back cumulatively in descending error order.

The error is a normalized MSE (:func:`normalized_mse`): each output feature's squared error over
the samples divided by that feature's FP32 variance, averaged, so ops of any scale compare and an
outlier channel cannot hide the damage per-tensor quantization does to the others.

The error of an op's output includes the error inherited from the ops before it, so ranking raw
output errors (as upstream iLiT did) puts every op downstream of a sensitive one ahead of it. This
strategy ranks by the error an op *adds*: its normalized MSE minus that of its input, approximated
by the op just before it in execution order (the order adaptors report ops in; exact for chains,
a heuristic across branches). Ties, and ops whose outputs could not be compared, keep Basic's
last-to-first order. If the ranked fallbacks never meet the goal, Basic's one-op probe follows.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..adaptor import to_numpy
from ..tune_cfg import TuneCfg
from .basic import BasicStrategy, incremental_fallback

__all__ = ["MSEStrategy", "normalized_mse", "rank_by_added_error"]

log = logging.getLogger(__name__)


def _leaves(value: Any) -> List[np.ndarray]:
    value = to_numpy(value)
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _leaves(v)]
    return [np.asarray(value, dtype=np.float64)]


def _samples(batches: Sequence[Any]) -> Optional[np.ndarray]:
    """An op's outputs as a (samples, features) matrix, the first axis of each batch being its samples.

    None when that reading does not hold (outputs of different sizes, scalars).
    """
    rows: List[np.ndarray] = []
    for b in batches:
        parts = _leaves(b)
        if not parts or any(p.ndim == 0 for p in parts) or len({p.shape[0] for p in parts}) != 1:
            return None
        n = parts[0].shape[0]
        rows.append(np.hstack([p.reshape(n, -1) for p in parts]))
    if not rows or len({r.shape[1] for r in rows}) != 1:
        return None
    return np.vstack(rows)


def _flatten(batches: Sequence[Any]) -> Optional[np.ndarray]:
    parts = [p.ravel() for b in batches for p in _leaves(b)]
    return np.concatenate(parts) if parts else None


def normalized_mse(fp32: Sequence[Any], quantized: Sequence[Any]) -> float:
    """The quantized outputs' squared error against FP32, relative to the FP32 outputs' spread.

    Each output element (channel, position) is a feature: its mean squared error over the samples
    is divided by its FP32 variance over the samples, and the ratios are averaged. This noise-to-signal
    ratio compares ops of any scale; unlike one spread per tensor (or upstream's min-max normalizing of
    each tensor), an outlier channel does not hide the damage done to the others, and a scale error
    still counts. With a single sample it falls back to the whole tensor's variance.
    Returns NaN when the outputs cannot be compared (missing, or different sizes).
    """
    ref, got = _samples(fp32), _samples(quantized)
    if ref is not None and got is not None and ref.shape == got.shape and ref.shape[0] >= 2 and ref.size:
        err = np.mean((got - ref) ** 2, axis=0)
        var = np.var(ref, axis=0)
        varying = var[var > 0]
        if varying.size:
            # a floor for features that barely vary (a ReLU output that is almost always 0), taken
            # from the typical feature, not the mean, which one outlier channel would dominate
            floor = 1e-2 * float(np.median(varying))
            value = float(np.mean(err / (var + floor)))
            return value if math.isfinite(value) else math.inf
    ref, got = _flatten(fp32), _flatten(quantized)
    if ref is None or got is None or ref.shape != got.shape or ref.size == 0:
        return math.nan
    err = float(np.mean((got - ref) ** 2))
    spread = float(np.var(ref)) or float(np.mean(ref ** 2))
    if not math.isfinite(err):
        return math.inf
    return err / spread if spread > 0.0 else (0.0 if err == 0.0 else math.inf)


def rank_by_added_error(ops: Sequence[str], nmse: Mapping[str, float], candidates: Sequence[str]) -> List[str]:
    """``candidates`` in descending order of the error each adds over the op before it in ``ops``.

    Equal scores (and NaN ones, ranked last) keep last-to-first model order, like Basic's probe.
    """
    added: Dict[str, float] = {}
    prev = 0.0
    for name in ops:
        err = nmse.get(name, math.nan)
        if math.isnan(err):
            added[name] = math.nan
            continue
        diff = err - prev  # inf - inf (two unusable outputs in a row) counts as adding nothing
        added[name] = 0.0 if math.isnan(diff) else diff
        prev = err
    order = list(reversed(candidates))  # stable sort: ties keep last-to-first order

    def key(name: str) -> float:
        v = added.get(name, math.nan)
        return -math.inf if math.isnan(v) else v

    return sorted(order, key=key, reverse=True)


class MSEStrategy(BasicStrategy):
    """Basic's model-wise phase, then fallback in descending order of per-op normalized MSE.

    Needs the adaptor's ``inspect_tensor`` (checked before tuning starts). If inspecting fails at
    run time, the strategy logs why and ranks ops with Basic's one-op-at-a-time probe instead, so a
    long run never dies half-way; that probe also follows when the error-ranked fallbacks all miss
    the goal.
    """

    requires_inspect_tensor = True
    #: how many calibration batches to compare outputs on
    inspect_batches: int = 3

    def configs(self) -> Iterator[TuneCfg]:
        yield from self.model_wise()
        base = self.best_model_wise
        if base is None or self.any_met():
            return
        candidates = self.space.fallback_candidates(base)
        if not candidates:
            return
        try:
            self.op_errors = self.measure_errors(base)
        except Exception as exc:  # noqa: BLE001 - a failed inspection must not end the run
            log.warning("mse: inspect_tensor failed (%s: %s); ranking ops by Basic's one-op fallback probe "
                        "instead", type(exc).__name__, exc)
            yield from self.probe_and_fallback(base, candidates)
            return
        order = rank_by_added_error(self.space.ops, self.op_errors, candidates)
        log.info("mse: fallback order by added normalized MSE: %s%s", ", ".join(order[:8]),
                 " ..." if len(order) > 8 else "")
        yield from incremental_fallback(self, base, order)
        if not self.any_met():
            # the error ranking was wrong about what hurts accuracy (e.g. a tensor whose consumer
            # re-quantizes it with the same range after its producer falls back): go on as Basic
            # would; configs already tried are replayed from their records, not run again
            log.info("mse: the error-ranked fallbacks did not meet the goal; probing ops one at a time")
            yield from self.probe_and_fallback(base, candidates)

    def measure_errors(self, base: TuneCfg) -> Dict[str, float]:
        """Each op's normalized MSE between FP32 and ``base``-quantized outputs on a few batches."""
        ctx = self.context
        n = max(1, min(self.inspect_batches, int(base["calibration"]["iterations"])))
        iterations = list(range(n))
        ops = self.space.ops
        q_model = ctx.quantize(base)
        ref = ctx.adaptor.inspect_tensor(ctx.model, ctx.calib_dataloader, ops, iterations)
        got = ctx.adaptor.inspect_tensor(q_model, ctx.calib_dataloader, ops, iterations)
        errors = {name: normalized_mse(ref.get(name, []), got.get(name, [])) for name in ops}
        missing = [name for name in ops if math.isnan(errors[name])]
        if len(missing) == len(ops):
            raise RuntimeError("inspect_tensor returned no comparable outputs for any op")
        if missing:
            log.warning("mse: no comparable outputs for %d ops (%s); they are fallen back last",
                        len(missing), ", ".join(missing[:5]))
        return errors
