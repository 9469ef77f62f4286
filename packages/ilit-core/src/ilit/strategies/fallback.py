"""The fp32-fallback search the built-in strategies share: find the few ops that must stay fp32.

The common cause of INT8 loss is a tensor (an outlier channel, say) that is quantized if *either*
the op producing it or an op reading it is quantized: falling back one of them recovers nothing,
only the pair (or the producer, a pass-through op and the consumer) does. One-op probes then all tie.

:class:`FallbackSearch` works on top of a failing base config (the best model-wise one):

1. **op-type stage** (``type_stage``): all candidate ops of one type in fp32, one type at a time,
   a cheap early probe (INC has the same stage), followed by the shrinking pass. Only with
   ``timeout > 0``: with ``timeout: 0`` the first passing config is returned as it is, and a whole
   type is rarely close to minimal.
2. **ranking** (given by the strategy): one-op probes (basic) or quantization error (mse). Ops whose
   ranking shows them clearly better than the rest are *informative*.
3. **cumulative** fallback of the informative ops, in rank order, until the goal is met.
4. **groups**: when the ranking ties (or the informative ops are not enough), for each op in rank
   order, on top of what was kept so far: the op alone, the op with the ops reading its output (for
   mse), and its *segment*: the ops its output reaches through ops without weights (a conv, the
   max-pool after it and the conv after that all quantize the same outlier). Then, in a second
   round, each op with every op it shares a tensor with (its graph neighbourhood). The graph is the
   adaptor's producer/consumer edges, or a chain in model order when the adaptor gives none. A group
   that clearly helps without meeting the goal is kept and the ranking is redone on top of it (an
   interacting pair and an independent sensitive op together).
5. **last resort**: cumulative fallback over the whole ranking.
6. **shrink**: from the passing set, re-quantize one op at a time (least suspect first) and keep it
   quantized while the goal holds. The tuner only asks for these configs when it searches on after a
   passing one (``timeout > 0``); the result is then 1-minimal (no single op can be re-quantized).

**bf16**: a search has one fallback ``dtype``. Where the adaptor offers bf16 for some candidate ops
(AMX / AVX512-BF16 CPUs), the strategies run the whole search with ``dtype="bf16"`` first (those ops
fall back to bf16, the others to fp32): bf16 keeps most of an op's accuracy at a fraction of fp32's
cost. Only if that search ends without meeting the goal does a second one run with fp32 fallback
(:meth:`TuningSpace.fallback_dtypes`). That one keeps its ops in fp32; after its shrinking pass, while the
budget allows (``timeout > 0``), each of them that offers bf16 is tried in bf16 in turn and stays there
while the goal holds (``to_bf16``), so the result mixes the two where bf16 is enough for some ops only.
Without bf16 in the capability nothing changes.

Everything is a deterministic function of the observed results, so a resumed run replays exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, Generator, Iterable, List, Optional, Sequence, Tuple

from ..strategy import TrialResult
from ..tune_cfg import TuneCfg, quantized_ops

if TYPE_CHECKING:  # pragma: no cover
    from ..strategy import Strategy

__all__ = ["FallbackSearch", "Ranking"]

log = logging.getLogger(__name__)

Search = Generator[TuneCfg, None, None]


@dataclass
class Ranking:
    """What a strategy learned about the candidate ops: most suspect first, with scores (higher = more
    suspect), and the ops it singles out as clearly sensitive on their own (most suspect first)."""

    order: List[str]
    scores: Dict[str, float]
    informative: List[str] = field(default_factory=list)


class FallbackSearch:
    """One fallback search on top of ``base`` (see the module docstring)."""

    #: a probe is informative when it recovers at least this share of the distance to the goal ...
    informative_share: float = 0.02
    #: ... and this many times the median change of a one-op probe
    noise_factor: float = 5.0

    def __init__(self, strategy: "Strategy", base: TuneCfg, candidates: Sequence[str], dtype: str = "fp32") -> None:
        self.strategy = strategy
        self.space = strategy.space
        self.base = base
        self.candidates = list(candidates)
        self.dtype = dtype  # what fallen-back ops run in: fp32, or bf16 where the op offers it
        self.tried: Dict[FrozenSet[str], TrialResult] = {}
        self.single_changes: List[float] = []  # |accuracy change| of each one-op probe on top of nothing
        self.passing: Optional[FrozenSet[str]] = None  # the smallest passing fallback set so far
        self.base_accuracy = strategy.accuracy_of(base)
        ctx = strategy.context
        self.sign = 1.0 if ctx.higher_is_better else -1.0
        self.threshold = strategy.config.tuning.accuracy_criterion.threshold(ctx.baseline, ctx.higher_is_better)

    # ------------------------------------------------------------------ measures
    def gain(self, accuracy: float, reference: float) -> float:
        """How much better ``accuracy`` is than ``reference`` (in the metric's good direction); NaN = -inf."""
        if math.isnan(accuracy):
            return -math.inf
        if math.isnan(reference):
            return math.inf
        return (accuracy - reference) * self.sign

    def informative(self, accuracy: float, reference: float) -> bool:
        """Whether ``accuracy`` clearly improves on ``reference``: by :attr:`informative_share` of what the
        reference lacks to meet the goal, and by :attr:`noise_factor` x the typical change a one-op
        fallback makes (its noise: several sensitive ops together can each recover little)."""
        gap = self.gain(self.threshold, reference)
        need = max(self.informative_share * gap, self.noise_factor * self.noise())
        return gap > 0 and self.gain(accuracy, reference) >= need

    def noise(self) -> float:
        """The median accuracy change of the one-op probes so far (0 before any)."""
        if not self.single_changes:
            return 0.0
        return float(sorted(self.single_changes)[len(self.single_changes) // 2])

    def accuracy(self, ops: Iterable[str]) -> float:
        key = frozenset(ops)
        if not key:
            return self.base_accuracy
        res = self.tried.get(key)
        return res.accuracy if res is not None else math.nan

    def ordered(self, ops: Iterable[str]) -> List[str]:
        keep = set(ops)
        return [n for n in self.space.ops if n in keep]

    # ------------------------------------------------------------------ one probe
    def probe(self, ops: Iterable[str], phase: str) -> Search:
        """Try ``base`` with ``ops`` fallen back, unless that set was already tried in this search."""
        key = frozenset(ops)
        if not key or key in self.tried:
            return
        cfg = self.config(key)
        if not quantized_ops(cfg):  # nothing int8: the baseline, not a quantized model
            self.tried[key] = TrialResult(math.nan, math.nan, False)
            return
        self.strategy.next_phase(phase if self.dtype == "fp32" else f"{phase} ({self.dtype})")
        yield cfg
        res = self.strategy.last
        self.tried[key] = res if res is not None else TrialResult(math.nan, math.nan, False)
        if len(key) == 1 and not math.isnan(self.tried[key].accuracy) and not math.isnan(self.base_accuracy):
            self.single_changes.append(abs(self.tried[key].accuracy - self.base_accuracy))
        if self.tried[key].meets and (self.passing is None or len(key) < len(self.passing)):
            self.passing = key

    def config(self, ops: Iterable[str]) -> TuneCfg:
        """``base`` with ``ops`` fallen back to this search's dtype."""
        return self.space.with_fallback(self.base, self.ordered(ops), self.dtype)

    def met(self, ops: Iterable[str]) -> bool:
        res = self.tried.get(frozenset(ops))
        return res is not None and res.meets

    # ------------------------------------------------------------------ stages
    def type_stage(self) -> Search:
        """All candidate ops of one type in fp32, a type at a time, until one meets the goal.

        Only when the search goes on after a passing config (``timeout > 0``) to shrink it: with timeout 0
        a passing type group would be returned as it is, often far from minimal.
        """
        if self.strategy.config.tuning.timeout <= 0:
            return
        by_type: Dict[str, List[str]] = {}
        for op in self.candidates:
            by_type.setdefault(self.space.op_types[op], []).append(op)
        for op_type, group in by_type.items():
            if len(group) < 2 or len(group) == len(self.candidates):
                continue
            yield from self.probe(group, f"op-type {op_type}")
            if self.met(group):
                return

    def cumulative(self, kept: FrozenSet[str], order: Sequence[str], phase: str = "cumulative") -> Search:
        """``kept`` plus ``order[:1]``, ``order[:2]``, ... in fp32 until one meets the goal."""
        fallen = set(kept)
        for op in order:
            if op in fallen:
                continue
            fallen.add(op)
            yield from self.probe(fallen, phase)
            if self.met(fallen):
                return

    def with_consumers(self, op: str) -> List[str]:
        """``op`` and the ops reading its output: every op that quantizes the tensor ``op`` writes."""
        return [op, *self.space.consumers(op)]

    def neighbourhoods(self, kept: FrozenSet[str], order: Sequence[str],
                       consumer_groups: bool = False) -> Generator[TuneCfg, None, Optional[FrozenSet[str]]]:
        """Groups of ops that may interact, on top of ``kept``, in two rounds over ``order``.

        First, for each op: the op alone (when something is kept), the op with the ops reading its output
        (``consumer_groups``), and its segment (the ops its output reaches through ops without weights,
        :meth:`TuningSpace.segment`). Then each op's whole graph neighbourhood (producers and consumers).
        Returns the first set that met the goal or clearly helped, else None.
        """
        reference = self.accuracy(kept)
        rounds: List[List[Tuple[Callable[[str], List[str]], str]]] = [[], [(self.space.neighbourhood, "neighbourhood")]]
        if kept:
            rounds[0].append((lambda op: [op], "single-op on top of kept ops"))
        if consumer_groups:
            rounds[0].append((self.with_consumers, "op with its consumers"))
        rounds[0].append((self.space.segment, "segment"))
        for groups in rounds:
            for op in order:
                for group_of, phase in groups:
                    group = kept | frozenset(n for n in group_of(op) if n in self.candidates)
                    if group == kept:
                        continue
                    yield from self.probe(group, phase)
                    if self.met(group) or self.informative(self.accuracy(group), reference):
                        return group
        return None

    def near_first(self, kept: FrozenSet[str], ranking: Ranking) -> List[str]:
        """The ranking's order for the group rounds: its informative ops (those not kept yet) first, then the
        ops that scored above 0 in rank order, then the rest nearest to the kept ops in the graph first (ops
        that interact share tensors, so the op a kept op needs in fp32 beside it is close to it); ties keep
        the ranking's order."""
        informative = [op for op in ranking.informative if op not in kept]
        rest = [op for op in ranking.order if op not in informative]
        if not kept:
            return informative + rest
        distance = {op: 0 for op in kept}
        frontier = list(kept)
        while frontier:
            nxt = []
            for op in frontier:
                for n in self.space.producers(op) + self.space.consumers(op):
                    if n not in distance:
                        distance[n] = distance[op] + 1
                        nxt.append(n)
            frontier = nxt
        far = len(self.space.ops) + 1
        return informative + sorted(rest, key=lambda op: (ranking.scores.get(op, 0.0) <= 0, distance.get(op, far)))

    def shrink(self, suspicion: Dict[str, float]) -> Search:
        """Re-quantize the passing set's ops one at a time, least suspect first, while the goal holds."""
        if self.passing is None:
            return
        current = self.passing
        order = sorted(self.ordered(current)[::-1], key=lambda n: suspicion.get(n, 0.0))  # stable: last op first
        for op in order:
            if len(current) <= 1:
                return
            smaller = current - {op}
            yield from self.probe(smaller, "shrink")
            if self.met(smaller):
                current = smaller

    def single_probes(self, kept: FrozenSet[str], order: Sequence[str]) -> Generator[TuneCfg, None, Ranking]:
        """Fall back each op of ``order`` not in ``kept`` alone on top of it, in that order, until one meets
        the goal; rank them by recovered accuracy (ties keep ``order``)."""
        reference = self.accuracy(kept)
        gains: Dict[str, float] = {}
        for op in order:
            if op in kept:
                continue
            yield from self.probe(kept | {op}, "single-op" if not kept else "single-op on top of kept ops")
            gains[op] = self.gain(self.accuracy(kept | {op}), reference)
            if self.passing is not None:
                break
        ranked = sorted(gains, key=lambda op: gains[op], reverse=True)  # stable
        informative = [op for op in ranked if self.informative(self.accuracy(kept | {op}), reference)]
        return Ranking(ranked, gains, informative)

    # ------------------------------------------------------------------ the whole search
    def search(self, rank: Callable[[FrozenSet[str]], Generator[TuneCfg, None, Ranking]],
               type_stage: bool = True, consumer_groups: bool = False,
               rerank_after_informative: bool = False) -> Search:
        """The stages of the module docstring. ``rank(kept)`` ranks the candidates not in ``kept``, with
        ``kept`` in fp32 (it may run trials), and returns a :class:`Ranking`. ``consumer_groups``: before
        whole neighbourhoods, try each op with the ops reading its output (for rankings that point at
        the op whose output is damaged, like mse's). ``rerank_after_informative``: when the informative ops
        are not enough, rank again on top of them before trying groups (for rankings that cost no trial,
        like mse's, and that single out only where the error enters, not what it ruins downstream)."""
        suspicion: Dict[str, float] = {}
        if type_stage:
            yield from self.type_stage()
        kept: FrozenSet[str] = frozenset()
        ranking = Ranking([], {}, [])
        while self.passing is None:
            ranking = yield from rank(kept)
            suspicion.update(ranking.scores)
            if self.passing is not None:
                break
            if ranking.informative:
                yield from self.cumulative(kept, ranking.informative)
                if self.passing is not None:
                    break
                kept = kept | frozenset(ranking.informative)
                if rerank_after_informative:
                    continue
            grown = yield from self.neighbourhoods(kept, self.near_first(kept, ranking), consumer_groups)
            if self.passing is not None:
                break
            if grown is None:  # nothing clearly helps: fall back cumulatively along the ranking
                yield from self.cumulative(kept, ranking.order, "cumulative (all)")
                break
            kept = grown  # it helped without meeting the goal: rank again on top of it
        if self.passing is not None:
            log.info("fallback search: %d op(s) in %s meet the goal (%s); shrinking while the budget allows",
                     len(self.passing), self.dtype, ", ".join(self.ordered(self.passing)[:8]))
            yield from self.shrink(suspicion)
            yield from self.to_bf16()

    def to_bf16(self) -> Search:
        """After an fp32 search met the goal: each op of the passing set that may run in bf16, last op first, in
        bf16 while the goal holds (configs the tuner asks for only when it searches on, like the shrink's)."""
        if self.passing is None or self.dtype != "fp32":
            return
        cfg = self.config(self.passing)
        for op in reversed([op for op in self.ordered(self.passing) if self.space.can_bf16(op)]):
            trial = self.space.with_fallback(cfg, [op], "bf16")
            self.strategy.next_phase("bf16 for fp32 ops")
            yield trial
            if self.strategy.last is not None and self.strategy.last.meets:
                cfg = trial
