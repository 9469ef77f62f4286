"""``basic``: model-wise tuning, then op-wise fp32 fallback ranked by recovered accuracy."""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional

from ..strategy import Strategy
from ..tune_cfg import TuneCfg

__all__ = ["BasicStrategy", "incremental_fallback"]


def incremental_fallback(strategy: Strategy, base: TuneCfg, order: List[str]) -> Iterator[TuneCfg]:
    """Fall back ``order[0]``, then ``order[:2]``, ... on top of ``base`` until a config meets the goal."""
    for n in range(1, len(order) + 1):
        yield strategy.space.with_fallback(base, order[:n])
        if strategy.last is not None and strategy.last.meets:
            return


class BasicStrategy(Strategy):
    """The default strategy, as iLiT described it.

    1. Try every model-wise config (calibration batch count x algorithm x scheme x granularity);
       stop there if any meets the goal.
    2. Otherwise, from the most accurate model-wise config, fall back each op alone to fp32, last op
       first, recording the accuracy each fallback recovers.
    3. Fall back cumulatively in order of recovered accuracy until the goal is met.
    """

    def model_wise(self) -> Iterator[TuneCfg]:
        """Phase 1, shared with other strategies; leaves the best config in ``self.best_model_wise``."""
        self.best_model_wise: Optional[TuneCfg] = None
        best_acc: Optional[float] = None
        for cfg in self.space.model_wise_configs():
            yield cfg
            res = self.last
            if res is None or math.isnan(res.accuracy):
                continue
            if best_acc is None or self.better_accuracy(res.accuracy, best_acc):
                self.best_model_wise, best_acc = cfg, res.accuracy

    def any_met(self) -> bool:
        return any(r.meets for _c, r in self.results)

    def configs(self) -> Iterator[TuneCfg]:
        yield from self.model_wise()
        base = self.best_model_wise
        if base is None or self.any_met():
            return
        yield from self.probe_and_fallback(base, self.space.fallback_candidates(base))

    def probe_and_fallback(self, base: TuneCfg, candidates: List[str]) -> Iterator[TuneCfg]:
        """Phases 2 and 3: fall back each op alone (last op first), then cumulatively by recovered accuracy."""
        recovered: Dict[str, float] = {}
        for op in reversed(candidates):  # bottom to top
            yield self.space.with_fallback(base, [op])
            if self.last is not None and self.last.meets:
                return
            recovered[op] = self.last.accuracy if self.last is not None else math.nan
        worst = -math.inf if self.context.higher_is_better else math.inf
        order = sorted(reversed(candidates), key=lambda op: worst if math.isnan(recovered[op]) else recovered[op],
                       reverse=self.context.higher_is_better)  # stable: ties keep last-to-first order
        yield from incremental_fallback(self, base, order)
