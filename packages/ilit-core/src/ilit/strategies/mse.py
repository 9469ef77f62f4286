"""``mse``: model-wise tuning, then fp32 fallback ranked by where quantization error enters the model.

After Basic's model-wise phase, the best model-wise config is quantized once more and
``inspect_tensor`` collects every op's outputs on a few calibration batches, from the FP32 model
and from the quantized one (no trial is spent on this). The error is a normalized MSE
(:func:`normalized_mse`): each output feature's squared error over the samples divided by that
feature's FP32 variance, averaged, so ops of any scale compare and an outlier channel cannot hide
the damage per-tensor quantization does to the others.

An op's output error includes the error inherited from the ops before it, so ranking raw output
errors (as upstream iLiT did) puts every op downstream of a sensitive one ahead of it. This strategy
looks at the error an op *adds* (its output's normalized MSE minus that of its input, read at its
producers in the adaptor's graph, or the op before it when the graph is unknown), and at the error
at its *input*: an op reading a tensor its producer damaged quantizes that tensor again, so both
must stay fp32 (an outlier channel between two ops).

The shared fallback search (:mod:`ilit.strategies.fallback`) then falls back the ops that clearly
add error, cumulatively; if that is not enough, each suspect op together with the ops reading its
output, then with all its graph neighbours; a group that helps is kept and the errors are measured
again on top of it. A shrinking pass follows while the budget allows. If inspecting fails, Basic's
one-op probes rank the ops instead. Where the adaptor offers bf16, the search falls ops back to bf16
first, and runs again with fp32 fallback only if that did not meet the goal; Basic's one-op probes,
the last resort when the error ranking was wrong, use fp32.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, FrozenSet, Generator, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..adaptor import to_numpy
from ..tune_cfg import TuneCfg
from .basic import BasicStrategy
from .fallback import FallbackSearch, Ranking

__all__ = ["MSEStrategy", "normalized_mse", "added_error", "rank_by_added_error"]

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


def added_error(ops: Sequence[str], nmse: Mapping[str, float],
                producers: Optional[Callable[[str], Sequence[str]]] = None) -> Dict[str, float]:
    """The error each op adds: its normalized MSE minus its input's, read at its producers' outputs
    (the op before it in ``ops`` when ``producers`` is None). NaN where the op's output is unusable."""
    added: Dict[str, float] = {}
    prev = 0.0
    for i, name in enumerate(ops):
        err = nmse.get(name, math.nan)
        if producers is None:
            inp = prev
        else:
            inputs = [nmse.get(p, math.nan) for p in producers(name)]
            inputs = [v for v in inputs if not math.isnan(v)]
            inp = max(inputs) if inputs else 0.0
        if math.isnan(err):
            added[name] = math.nan
            continue
        diff = err - inp  # inf - inf (two unusable outputs in a row) counts as adding nothing
        added[name] = 0.0 if math.isnan(diff) else diff
        prev = err
    return added


def rank_by_added_error(ops: Sequence[str], nmse: Mapping[str, float], candidates: Sequence[str]) -> List[str]:
    """``candidates`` in descending order of the error each adds over the op before it in ``ops``.

    Equal scores (and NaN ones, ranked last) keep last-to-first model order, like Basic's probe.
    """
    added = added_error(ops, nmse)
    order = list(reversed(candidates))  # stable sort: ties keep last-to-first order

    def key(name: str) -> float:
        v = added.get(name, math.nan)
        return -math.inf if math.isnan(v) else v

    return sorted(order, key=key, reverse=True)


class MSEStrategy(BasicStrategy):
    """Basic's model-wise phase, then the fallback search ranked by per-op normalized MSE.

    Needs the adaptor's ``inspect_tensor`` (checked before tuning starts). If inspecting fails at
    run time, the strategy logs why and ranks ops with Basic's one-op probes instead, so a long run
    never dies half-way.
    """

    requires_inspect_tensor = True
    #: how many calibration batches to compare outputs on
    inspect_batches: int = 3
    #: an op clearly adds error when it adds at least this share of the largest added error ...
    significant_share: float = 0.1
    #: ... and this share of its own output's error (downstream of a ruined tensor, differences are noise)
    own_share: float = 0.25

    def configs(self) -> Iterator[TuneCfg]:
        yield from self.model_wise()
        base = self.best_model_wise
        if base is None or self.any_met():
            return
        candidates = self.space.fallback_candidates(base)
        if not candidates:
            return
        try:
            first = self.error_ranking(FallbackSearch(self, base, candidates), frozenset())
        except Exception as exc:  # noqa: BLE001 - a failed inspection must not end the run
            log.warning("mse: inspect_tensor failed (%s: %s); ranking ops by Basic's one-op fallback probe "
                        "instead", type(exc).__name__, exc)
            yield from self.fallback_search(base, candidates)
            return
        log.info("mse: fallback order by added normalized MSE: %s%s", ", ".join(first.order[:8]),
                 " ..." if len(first.order) > 8 else "")
        for dtype in self.space.fallback_dtypes(candidates):  # bf16 fallback first where the space offers it
            search = FallbackSearch(self, base, candidates, dtype)
            yield from search.search(self._ranker(search, first), type_stage=False, consumer_groups=True,
                                     rerank_after_informative=True)
            if search.passing is not None or self.any_met():
                return
        # the error ranking was wrong about what hurts accuracy: go on as Basic would (fp32 fallback); configs
        # already tried are replayed from their records, not run again
        log.info("mse: the error-ranked fallbacks did not meet the goal; probing ops one at a time")
        yield from self.fallback_search(base, candidates, ["fp32"])

    def _ranker(self, search: FallbackSearch,
                first: Ranking) -> Callable[[FrozenSet[str]], Generator[TuneCfg, None, Ranking]]:
        """``rank(kept)`` for ``search``: ``first`` at the start, then the errors measured on top of ``kept``."""
        rankings = iter([first])

        def rank(kept: FrozenSet[str]) -> Generator[TuneCfg, None, Ranking]:
            ranking = next(rankings, None)
            if ranking is None:
                try:
                    ranking = self.error_ranking(search, kept)
                except Exception as exc:  # noqa: BLE001
                    log.warning("mse: inspect_tensor failed (%s: %s); probing ops one at a time instead",
                                type(exc).__name__, exc)
                    ranking = yield from self.probe_ranking(search, kept)
            if kept and not any(v > 0 for v in ranking.scores.values()):
                # the errors show nothing more to fall back, yet the goal is not met: what hurts is not
                # visible in the outputs compared, so probe the remaining ops one at a time
                log.info("mse: no op left adds error; probing ops one at a time on top of %s",
                         ", ".join(search.ordered(kept)[:8]))
                ranking = yield from self.probe_ranking(search, kept)
            return ranking

        return rank

    def error_ranking(self, search: FallbackSearch, kept: FrozenSet[str]) -> Ranking:
        """Rank the candidates not in ``kept`` by the error they add or read, with ``kept`` in fp32."""
        errors = self.measure_errors(search.config(kept))
        producers = self.space.producers
        added = added_error(self.space.ops, errors, producers)
        log.debug("mse: normalized MSE per op (kept %s): %s", sorted(kept),
                  {op: round(v, 4) for op, v in errors.items()})
        if not kept:
            self.op_errors = errors
            # what reports show: the normalized MSE each op adds to its input's
            self.insights["op_error"] = {op: (v if math.isfinite(v) else None) for op, v in added.items()}
        left = [op for op in reversed(search.candidates) if op not in kept]  # ties: last op first

        def finite(v: float) -> float:
            return -math.inf if math.isnan(v) else v

        # an op reading a tensor its producer damaged quantizes it again: it scores that error too
        scores = {op: max([finite(added[op])] + [finite(added[p]) for p in producers(op)]) for op in left}
        order = sorted(left, key=lambda op: (scores[op], finite(added[op])), reverse=True)
        own = [finite(added[op]) for op in left if math.isfinite(finite(added[op]))]
        informative: List[str] = []
        if own and max(own) > 0:
            floor = self.significant_share * max(own)

            def clear(op: str) -> bool:  # much error added, and a real part of the op's own output error
                a = finite(added[op])
                return a > 0 and a >= floor and a >= self.own_share * errors.get(op, math.inf)

            clear_ops = [op for op in left if clear(op)]
            # where the error enters: the clear ops no other clear op feeds. Downstream of a ruined tensor the
            # added errors are noise (a max-pool re-quantizing it "adds" as much as the op that ruined it), so
            # those ops are judged again once the entry ops are fp32 (the search re-measures on top of them)
            below = {n for op in clear_ops for n in self.space.downstream(op)}
            informative = sorted((op for op in clear_ops if op not in below), key=lambda op: finite(added[op]),
                                 reverse=True)
            order = informative + [op for op in order if op not in informative]
        return Ranking(order, scores, informative)

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
