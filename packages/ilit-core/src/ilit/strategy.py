"""The ``Strategy`` protocol: what proposes tune_cfgs and learns from their results (extension API)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from .config import Config
from .space import TuningSpace
from .tune_cfg import TuneCfg, cfg_fingerprint, quantized_ops

if TYPE_CHECKING:  # pragma: no cover
    from .adaptor import Adaptor

__all__ = ["Strategy", "TrialResult", "StrategyContext", "Proposal"]

#: what :meth:`Strategy.configs` yields: one config, or a list of independent configs (a batch)
Proposal = Union[TuneCfg, List[TuneCfg]]


@dataclass(frozen=True)
class TrialResult:
    """What the tuner learned about one config."""

    accuracy: float
    objective: float
    meets: bool  # the accuracy criterion holds against the baseline


@dataclass
class StrategyContext:
    """What a strategy may use besides the space: the baseline and access to the adaptor."""

    baseline: float
    higher_is_better: bool
    adaptor: "Adaptor"
    model: Any
    calib_dataloader: Iterable[Any]
    quantize: Callable[[TuneCfg], Any]  # the tuner's quantize, sharing its calibration cache
    seed: int


class Strategy(ABC):
    """Register subclasses under the ``ilit.strategies`` entry-point group.

    The tuner iterates :meth:`configs`; after each yielded config it calls :meth:`observe` with the
    result before asking for the next one. A config the tuner has already evaluated (earlier in the
    run, or in a resumed history) is observed from its record without being run again, so a
    deterministic strategy resumes exactly by replay. The end of the iterable ends the search.

    ``configs`` may be a generator or return any iterable (a list works); the tuner closes it at the
    end only if it has a ``close`` method. It may also yield a *list* of configs that do not depend on
    each other's results (a batch: e.g. the model-wise configs, or one-op probes): the tuner may evaluate
    a batch's configs in any order or at once, and records and observes them in list order before
    asking for the next proposal, so results and resume are the same as yielding them one by one.

    ``self.insights`` is a JSON-safe dict the strategy may fill with what it learned for reports; the
    tuner saves it in history.json after every trial. The built-in strategies write ``phase`` ({trial
    number: search phase}, see :meth:`next_phase`), ``op_sensitivity`` ({op: accuracy recovered by
    falling it back alone}, basic) and ``op_error`` ({op: normalized MSE it adds}, mse).
    """

    #: set to True if the strategy calls ``context.adaptor.inspect_tensor``; checked before tuning starts.
    requires_inspect_tensor: bool = False

    def __init__(self, space: TuningSpace, config: Config, context: StrategyContext) -> None:
        self.space = space
        self.config = config
        self.context = context
        self.results: List[Tuple[TuneCfg, TrialResult]] = []
        self.insights: Dict[str, Any] = {}
        self._phase = ""
        self._trials_seen: Set[str] = set()

    @abstractmethod
    def configs(self) -> Iterable[Proposal]:
        """Yield tune_cfgs to try, reading ``self.results`` for what was learned so far."""

    def observe(self, tune_cfg: TuneCfg, result: TrialResult) -> None:
        """Record a result; override to update a model of the search space (and call this one)."""
        self.results.append((tune_cfg, result))
        fp = cfg_fingerprint(tune_cfg)
        if fp not in self._trials_seen and quantized_ops(tune_cfg):
            # a quantized config seen for the first time is a new trial (the tuner numbers them in this order)
            self._trials_seen.add(fp)
            if self._phase:
                self.insights.setdefault("phase", {})[str(len(self._trials_seen))] = self._phase

    def next_phase(self, name: str) -> None:
        """Name the search phase the next proposed configs belong to (recorded in ``insights['phase']``)."""
        self._phase = name

    def accuracy_of(self, tune_cfg: TuneCfg) -> float:
        """The accuracy observed for ``tune_cfg`` (NaN if it was not observed)."""
        for cfg, res in reversed(self.results):
            if cfg == tune_cfg:
                return res.accuracy
        return math.nan

    @property
    def last(self) -> Optional[TrialResult]:
        """The result of the config observed last; None before the first result."""
        return self.results[-1][1] if self.results else None

    def better_accuracy(self, a: float, b: float) -> bool:
        """Whether accuracy ``a`` beats ``b`` for this metric's direction."""
        return a > b if self.context.higher_is_better else a < b

    @classmethod
    def check(cls, adaptor: "Adaptor") -> None:
        """Raise ConfigError before tuning if this strategy cannot work with ``adaptor``."""
        from .errors import ConfigError

        if cls.requires_inspect_tensor and not adaptor.supports_inspect_tensor():
            raise ConfigError("tuning.strategy", f"this strategy needs inspect_tensor, which the "
                              f"{adaptor.name or type(adaptor).__name__} adaptor does not implement; "
                              "use 'basic' or 'bayesian'")
