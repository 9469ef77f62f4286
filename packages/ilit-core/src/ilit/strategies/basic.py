"""``basic``: model-wise tuning, then the shared fp32-fallback search ranked by one-op probes."""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Dict, FrozenSet, Generator, Iterator, List, Optional, Set, Tuple

from ..strategy import Strategy
from ..tune_cfg import TuneCfg
from .fallback import FallbackSearch, Ranking

__all__ = ["BasicStrategy", "incremental_fallback", "order_model_wise"]


def incremental_fallback(strategy: Strategy, base: TuneCfg, order: List[str]) -> Iterator[TuneCfg]:
    """Fall back ``order[0]``, then ``order[:2]``, ... on top of ``base`` until a config meets the goal."""
    for n in range(1, len(order) + 1):
        yield strategy.space.with_fallback(base, order[:n])
        if strategy.last is not None and strategy.last.meets:
            return


def _traits(cfg: TuneCfg) -> Set[Tuple[Any, ...]]:
    """What a model-wise config chooses: the calibration batch count and every op's field values."""
    out: Set[Tuple[Any, ...]] = {("calibration", int(cfg["calibration"]["iterations"]))}
    for op in cfg["ops"].values():
        for part in ("weight", "activation"):
            for fld, value in op.get(part, {}).items():
                out.add((part, fld, value))
    return out


def order_model_wise(configs: List[TuneCfg]) -> List[TuneCfg]:
    """The most-preferred config first, then each time the one least like those before it; each config's
    recipe variants (e.g. SmoothQuant alphas) right after it.

    Trying different calibration sizes, schemes and algorithms early shows soon whether any
    model-wise choice matters; ties keep the preference order. A recipe is what rescues a model whose
    plain configs all fail alike (a transformer's outlier channels), so it comes before the phase can
    be cut short, not after every other model-wise choice.
    """
    plain = [c for c in configs if not c.get("recipes")]
    variants: Dict[str, List[TuneCfg]] = {}
    for c in configs:
        if c.get("recipes"):
            variants.setdefault(_plain_key(c), []).append(c)
    out: List[TuneCfg] = []
    for cfg in _farthest_first(plain):
        out.append(cfg)
        out.extend(variants.pop(_plain_key(cfg), []))
    return out + [c for rest in variants.values() for c in rest]  # variants of no listed plain config


def _plain_key(cfg: TuneCfg) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k != "recipes"}, sort_keys=True, default=str)


def _farthest_first(configs: List[TuneCfg]) -> List[TuneCfg]:
    if len(configs) <= 2:
        return list(configs)
    traits = [_traits(c) for c in configs]
    order = [0]
    left = list(range(1, len(configs)))
    while left:
        def distance(i: int) -> int:
            return min(len(traits[i] ^ traits[j]) for j in order)
        best = max(left, key=lambda i: (distance(i), -i))
        order.append(best)
        left.remove(best)
    return [configs[i] for i in order]


class BasicStrategy(Strategy):
    """The default strategy.

    1. Model-wise configs (calibration batch count x algorithm x scheme x granularity), the most
       preferred first and then the most different ones; it stops there if one meets the goal, and
       cuts the phase short when :attr:`min_model_wise` configs all fail alike (their accuracies differ
       by less than the best of them lacks to meet the goal): that says fallback is needed, not another
       model-wise choice.
    2. From the most accurate model-wise config, the shared fallback search
       (:mod:`ilit.strategies.fallback`): the op-type stage, one-op probes (last op first) that rank
       the ops by recovered accuracy, cumulative fallback of the ops that clearly help, graph
       neighbourhoods when the probes tie, and a shrinking pass while the budget allows. Where the
       adaptor offers bf16 for some ops, the search runs with bf16 fallback first, and again with
       fp32 fallback only if that did not meet the goal.
    """

    #: model-wise configs tried before the phase may be cut short
    min_model_wise: int = 3
    #: they "fail alike" when they differ among themselves by less than this share of what the best of
    #: them lacks to meet the goal (at 1.0: model-wise choices closed less than half the distance)
    alike_share: float = 1.0

    def model_wise(self) -> Iterator[TuneCfg]:
        """Phase 1, shared with other strategies; leaves the best config in ``self.best_model_wise``."""
        self.best_model_wise: Optional[TuneCfg] = None
        best_acc: Optional[float] = None
        accs: List[float] = []
        configs = order_model_wise(self.space.model_wise_configs())
        self.next_phase("model-wise")
        for n, cfg in enumerate(configs):
            yield cfg
            res = self.last
            if res is None or math.isnan(res.accuracy):
                continue
            accs.append(res.accuracy)
            if best_acc is None or self.better_accuracy(res.accuracy, best_acc):
                self.best_model_wise, best_acc = cfg, res.accuracy
            if res.meets:
                continue
            if len(accs) >= self.min_model_wise and n + 1 < len(configs) and self._fail_alike(accs):
                self.insights["model_wise_cut"] = {"after": n + 1, "of": len(configs)}
                return

    def _fail_alike(self, accs: List[float]) -> bool:
        ctx = self.context
        thr = self.config.tuning.accuracy_criterion.threshold(ctx.baseline, ctx.higher_is_better)
        best = max(accs) if ctx.higher_is_better else min(accs)
        gap = (thr - best) if ctx.higher_is_better else (best - thr)
        return gap > 0 and (max(accs) - min(accs)) <= self.alike_share * gap

    def any_met(self) -> bool:
        return any(r.meets for _c, r in self.results)

    def configs(self) -> Iterator[TuneCfg]:
        yield from self.model_wise()
        base = self.best_model_wise
        if base is None or self.any_met():
            return
        yield from self.fallback_search(base, self.space.fallback_candidates(base))

    def fallback_search(self, base: TuneCfg, candidates: List[str],
                        dtypes: Optional[List[str]] = None) -> Iterator[TuneCfg]:
        """The shared search (op-type stage first), ranking ops by one-op probes; with bf16 fallback first
        where the space offers it, then with fp32 if that did not meet the goal (or the given ``dtypes``)."""
        if not candidates:
            return
        for dtype in dtypes or self.space.fallback_dtypes(candidates):
            search = FallbackSearch(self, base, candidates, dtype)
            yield from search.search(functools.partial(self.probe_ranking, search))
            if search.passing is not None or self.any_met():
                return

    def probe_ranking(self, search: FallbackSearch, kept: FrozenSet[str]) -> Generator[TuneCfg, None, Ranking]:
        """Fall back each op not in ``kept`` alone on top of it (last op first); rank by recovered accuracy."""
        ranking = yield from search.single_probes(kept, list(reversed(search.candidates)))
        if not kept:
            self.insights["op_sensitivity"] = {op: (None if math.isinf(g) else g * search.sign)
                                               for op, g in ranking.scores.items()}
        return ranking
