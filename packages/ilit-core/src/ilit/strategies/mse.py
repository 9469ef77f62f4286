"""``mse``: model-wise tuning, then fp32 fallback of the ops whose quantized outputs drift most.

After Basic's model-wise phase, the best model-wise config is quantized once more and
``inspect_tensor`` collects every op's outputs on a few calibration batches, from the FP32 model
and from the quantized one. Ops are then fallen back cumulatively in descending error order.

The error of an op's output includes the error inherited from the ops before it, so ranking raw
output errors (as upstream iLiT did) puts every op downstream of a sensitive one ahead of it. This
strategy ranks by the error an op *adds*: its normalized MSE minus the largest normalized MSE among
its inputs' producers, approximated by the op just before it in execution order (the order adaptors
report ops in). Ties, and ops whose outputs could not be compared, keep Basic's last-to-first order.
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

log = logging.getLogger("ilit")


def _flatten(batches: Sequence[Any]) -> Optional[np.ndarray]:
    """One float64 vector of every output of an op over the inspected batches (None if empty)."""
    parts: List[np.ndarray] = []
    for b in batches:
        value = to_numpy(b)
        if isinstance(value, Mapping):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            parts.extend(np.asarray(v, dtype=np.float64).ravel() for v in value)
        else:
            parts.append(np.asarray(value, dtype=np.float64).ravel())
    return np.concatenate(parts) if parts else None


def normalized_mse(fp32: Sequence[Any], quantized: Sequence[Any]) -> float:
    """Mean squared error of ``quantized`` against ``fp32``, divided by the FP32 tensor's variance.

    Dividing by the reference's own spread (a noise-to-signal ratio) makes ops of different scale
    comparable; unlike min-max normalizing each tensor separately, it still sees a scale error.
    Returns NaN when the outputs cannot be compared (missing, or different sizes).
    """
    ref, got = _flatten(fp32), _flatten(quantized)
    if ref is None or got is None or ref.shape != got.shape or ref.size == 0:
        return math.nan
    err = float(np.mean((got - ref) ** 2))
    spread = float(np.var(ref))
    if spread <= 0.0:  # a constant output: compare with its magnitude instead
        spread = float(np.mean(ref ** 2))
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
    long run never dies half-way.
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

    def probe_and_fallback(self, base: TuneCfg, candidates: List[str]) -> Iterator[TuneCfg]:
        """Basic's phases 2 and 3, used only when inspection failed."""
        recovered: Dict[str, float] = {}
        for op in reversed(candidates):
            yield self.space.with_fallback(base, [op])
            if self.last is not None and self.last.meets:
                return
            recovered[op] = self.last.accuracy if self.last is not None else math.nan
        worst = -math.inf if self.context.higher_is_better else math.inf
        order = sorted(reversed(candidates), key=lambda op: worst if math.isnan(recovered[op]) else recovered[op],
                       reverse=self.context.higher_is_better)
        yield from incremental_fallback(self, base, order)
