"""One tuning run: the FP32 checks and baseline, the trials a strategy proposes, their records, and the result.

:class:`TuningRun` owns a run's state; ``Tuner.tune`` builds one and calls its steps in order:
``check_inputs`` -> ``baseline`` -> ``search`` -> ``finish``. Each trial is ``trial`` (quantize, evaluate,
measure) then ``record`` (history, best model, log). The strategy may propose a batch of independent configs;
:meth:`TuningRun.run_batch` is the seam where they could run concurrently (today: in order).
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .adaptor import Adaptor
from .arguments import describe_inputs
from .config import Config
from .errors import RepeatedTrialError
from .evaluation import Evaluator
from .history import History, Trial
from .interrupts import raise_if_interrupted
from .objective import Objective
from .space import TuningSpace
from .strategy import Strategy, StrategyContext, TrialResult
from .text import printable
from .tune_cfg import TuneCfg, cfg_fingerprint, describe, quantized_ops
from .version import __version__
from .workspace import Workspace

__all__ = ["TuningRun", "RunData", "REPEATED_ERRORS"]

log = logging.getLogger(__name__)
_now = time.perf_counter  # the clock of timeout and trial times (a test swaps it)
_MAX_REPLAYS = 100_000  # a strategy re-proposing known configs this many times in a row is stuck
#: this many trials in a row failing with the same error is a deterministic problem, not a bad config
REPEATED_ERRORS = 3


@dataclass
class RunData:
    """The user's model and data for one run."""

    model: Any
    q_dataloader: Any
    q_func: Optional[Callable[[Any], Any]]
    timing_inputs: Any  # the batch the objective runs models on
    calib_inputs: Any  # the first calibration batch's inputs, run once on the FP32 model before any trial


@dataclass
class _State:
    """What the loop has learned so far."""

    best: Optional[Trial] = None
    best_model: Any = None
    seen: Dict[str, Trial] = field(default_factory=dict)
    done: Dict[str, Trial] = field(default_factory=dict)  # from the resumed history, by fingerprint
    replays: int = 0
    stop_reason: str = "the strategy's space is exhausted"


class _Stop(Exception):
    """Ends the search loop with a reason."""


class TuningRun:
    """The state and the named steps of one ``tune`` call."""

    def __init__(self, config: Config, adaptor: Adaptor, strategy_cls: type, objective: Objective,
                 evaluator: Evaluator, workspace: Workspace, data: RunData, resumed: Optional[History],
                 resume_file: Optional[str]) -> None:
        self.config, self.adaptor, self.objective, self.evaluate = config, adaptor, objective, evaluator
        self.workspace, self.data, self.strategy_cls = workspace, data, strategy_cls
        self.t_cfg = config.tuning
        self.space = TuningSpace.build(adaptor.query_fw_capability(data.model), config)
        self.history = History(config_fingerprint=config.search_fingerprint(),
                               model_fingerprint=adaptor.fingerprint(data.model), config=dict(config.raw),
                               metric_higher_is_better=evaluator.higher_is_better, objective=self.t_cfg.objective)
        self.state = _State()
        if resumed is not None:
            resumed.check_resumable(self.history, str(resume_file))
            self.state.done = {t.fingerprint: t for t in resumed.trials}
            self.history.baseline_accuracy = resumed.baseline_accuracy
            self.history.baseline_objective = resumed.baseline_objective
            log.info("resuming from %s: %d trials already done", printable(resume_file), len(self.state.done))
        self.t0 = _now()
        self.strategy: Optional[Strategy] = None
        self.history.run = run_facts(adaptor, data.model)
        self.progress = _progress(self.t_cfg.max_trials, self.t_cfg.timeout)
        if evaluator.eval_dataloader is not None:  # counted batch by batch on the status line (itself when off)
            evaluator.eval_dataloader = self.progress.batches(evaluator.eval_dataloader, "evaluate")
        log.info("%s adaptor: %d quantizable ops, %d model-wise configs, strategy %s, objective %s",
                 adaptor.name or type(adaptor).__name__, len(self.space.ops), len(self.space.model_wise_configs()),
                 self.t_cfg.strategy, self.t_cfg.objective)

    # ------------------------------------------------------------------ steps
    def check_inputs(self) -> None:
        """Run the FP32 model on one calibration batch, so data the model cannot take fails now, not in every trial."""
        with self.adaptor.fp32_context(self.data.model):
            self._step("running the FP32 model on the first q_dataloader batch", self.data.calib_inputs,
                       lambda: self.adaptor.infer(self.data.model, self.data.calib_inputs))

    def baseline(self) -> None:
        """Measure the FP32 model's accuracy and objective (unless the resumed history has them); save the history."""
        h, model = self.history, self.data.model
        if h.baseline_accuracy is None:
            tb = _now()
            with self.adaptor.fp32_context(model):  # the user's model leaves in the mode it came in
                self.progress.set_phase("evaluate")
                h.baseline_accuracy = self._step(f"evaluating the FP32 model ({self.evaluate.source})", None,
                                                 lambda: self.evaluate(model))
                self.progress.set_phase(f"measuring {self.t_cfg.objective}")
                h.baseline_objective = self._step(f"measuring the FP32 model's {self.t_cfg.objective}",
                                                  self.data.timing_inputs,
                                                  lambda: self.objective.measure(model, self.adaptor,
                                                                                 self.data.timing_inputs))
            h.run["baseline_s"] = _now() - tb
        crit = self.t_cfg.accuracy_criterion
        log.info("FP32 baseline: accuracy %.4f, %s %s; goal: %s (accuracy %s %.4f)", self.baseline_accuracy,
                 self.t_cfg.objective, self.objective.format(float(h.baseline_objective or math.nan)), crit.describe(),
                 ">=" if self.higher_is_better else "<=", crit.threshold(self.baseline_accuracy, self.higher_is_better))
        self.save_history()

    def search(self) -> None:
        """Ask the strategy for configs and run each new one until the goal, a limit or the end of its proposals."""
        ctx = StrategyContext(baseline=self.baseline_accuracy, higher_is_better=self.higher_is_better,
                              adaptor=self.adaptor, model=self.data.model, calib_dataloader=self.data.q_dataloader,
                              quantize=self.quantize, seed=self.t_cfg.random_seed)
        self.strategy = strategy = self.strategy_cls(self.space, self.config, ctx)
        proposals = strategy.configs()
        try:
            for proposal in proposals:
                self.run_batch(proposal if isinstance(proposal, list) else [proposal])
        except _Stop as stop:
            self.state.stop_reason = str(stop)
        except KeyboardInterrupt:
            self.save_history()  # every finished trial is kept; the one interrupted is not
            log.warning("interrupted after %d trials; the history is saved. Continue with tune(..., resume_file=%r)%s",
                        len(self.history.trials), self.workspace.history_path,
                        f"; best model so far: {printable(self.workspace.best_model_dir)}"
                        if self.state.best and self.workspace.has_best() else "")
            raise
        finally:
            self.progress.close()
            close = getattr(proposals, "close", None)
            if callable(close):
                close()

    def run_batch(self, proposed: List[TuneCfg]) -> None:
        """Run a batch of independent configs and observe each, in order (the place to run them concurrently)."""
        assert self.strategy is not None
        for cfg in proposed:
            recorded = len(self.history.trials)
            result = self.consider(cfg)
            self.strategy.observe(cfg, result)
            if len(self.history.trials) == recorded:  # replayed from a record, or all-fp32: nothing new to save
                continue
            self.save_history()  # after observe, so the file holds what the strategy learned from this trial
            repeated = self._repeated_error()
            if repeated:
                raise _Stop(f"the same error ended {REPEATED_ERRORS} trials in a row: {repeated}")
            if self.t_cfg.timeout == 0 and result.meets:
                raise _Stop("a config met the accuracy goal (timeout 0: stop at the first)")

    def consider(self, proposed: TuneCfg) -> TrialResult:
        """The result of one proposed config: from a record if it was run before, else from a new trial."""
        tune_cfg = self.adaptor.canonical_cfg(proposed)  # what is run and recorded; the strategy sees its own
        fp = cfg_fingerprint(tune_cfg)
        st = self.state
        if fp in st.seen:  # never evaluate the same config (or one building the same model) twice
            st.replays += 1
            if st.replays > _MAX_REPLAYS:
                raise _Stop("the strategy kept proposing configs already evaluated")
            t = st.seen[fp]
            return TrialResult(t.accuracy, t.objective, t.meets)
        st.replays = 0
        if not quantized_ops(tune_cfg):  # all-fp32 is the baseline, not a quantized model
            return TrialResult(math.nan, math.nan, False)
        self._check_limits()
        number = len(self.history.trials) + 1
        if fp in st.done:  # replayed from the resumed history
            trial, q_model, source = Trial(**{**st.done[fp].__dict__, "trial": number}), None, "resumed"
            self.history.run.setdefault("resumed_trials", []).append(number)
        else:
            (trial, q_model), source = self.trial(number, tune_cfg), "ran"
        st.seen[fp] = trial
        self.record(trial, q_model, source)
        return TrialResult(trial.accuracy, trial.objective, trial.meets)

    def trial(self, number: int, tune_cfg: TuneCfg) -> Tuple[Trial, Any]:
        """Quantize, evaluate and (if it meets the goal) measure one config; an exception fails this trial only."""
        tq = _now()
        self.progress.start_trial(number)
        q_model, error, comparison = None, None, None
        acc = math.nan
        te = to = tq
        try:
            q_model = self.quantize(tune_cfg)
            te = _now()
            self.progress.set_phase("evaluate")
            acc = self.evaluate(q_model)
            to = _now()
            if self._meets(acc):  # only a passing model can be the best
                self.progress.set_phase(f"measuring {self.t_cfg.objective}")
                with self.adaptor.fp32_context(self.data.model):
                    comparison = self.objective.compare(q_model, self.data.model, self.adaptor,
                                                        self.data.timing_inputs)
        except Exception as exc:  # noqa: BLE001 - one bad config must not end hours of tuning
            raise_if_interrupted(exc)  # a Ctrl-C that library code turned into another error
            error = f"{type(exc).__name__}: {exc}"
            log.warning("trial %d failed and is skipped: %s", number, printable(error),
                        exc_info=log.isEnabledFor(logging.DEBUG))
            q_model = None
        tend = _now()
        self.progress.end_trial(tend - tq)
        ok = error is None
        cmp = comparison if ok else None
        trial = Trial(trial=number, tune_cfg=tune_cfg, accuracy=acc, objective=cmp.value if cmp else math.nan,
                      meets=ok and self._meets(acc), quantize_s=max(0.0, te - tq),
                      evaluate_s=max(0.0, to - te) if ok else 0.0, objective_s=max(0.0, tend - to) if ok else 0.0,
                      elapsed_s=tend - self.t0, error=error, ratio=_finite(cmp.ratio) if cmp else None,
                      spread=_finite(cmp.spread) if cmp else None, reliable=cmp.reliable if cmp else None)
        if cmp is not None and not cmp.reliable:
            log.warning("trial %d: the %s ratio %.3g varied by +-%.0f%% between measurement rounds: the machine is "
                        "too busy for a reliable figure", number, self.t_cfg.objective, cmp.ratio, 100 * cmp.spread)
        return trial, q_model

    def record(self, trial: Trial, q_model: Any, source: str) -> None:
        """Append a trial to the history, log it, and keep it (saved to the workspace) if it is the best so far."""
        h, st = self.history, self.state
        h.trials.append(trial)
        self._log_trial(trial, source)
        if trial.meets and (st.best is None or self._better(trial, st.best)):
            st.best, st.best_model = trial, q_model
            h.best = trial.trial
            if q_model is not None:
                self.workspace.save_best(self.adaptor.save, q_model)

    def finish(self) -> Any:
        """Log the summary and return the best model (rebuilt if it came from a resumed history), or None."""
        h, st = self.history, self.state
        h.finished, h.stop_reason = True, st.stop_reason
        h.run["total_s"] = _now() - self.t0
        self.save_history()
        log.info("stopped: %s", st.stop_reason)
        repeated = self._repeated_error()
        if repeated:
            raise RepeatedTrialError(f"the same error ended the last {REPEATED_ERRORS} trials, so it does not depend "
                                     f"on the config: {repeated}. Fix its cause and run again (resume_file="
                                     f"{self.workspace.history_path!r} keeps the finished trials)")
        if h.trials and all(t.error for t in h.trials):
            raise RuntimeError(f"every trial failed; the first error was: {h.trials[0].error}. "
                               f"History: {self.workspace.history_path}")
        if st.best is None:
            self._warn_no_result()
            return None
        self._warn_if_not_better(st.best)
        if st.best_model is None:  # the best trial came from a resumed history: rebuild it
            st.best_model = self.quantize(st.best.tune_cfg)
            self.workspace.save_best(self.adaptor.save, st.best_model)
        return st.best_model

    # ------------------------------------------------------------------ helpers
    @property
    def baseline_accuracy(self) -> float:
        return float(self.history.baseline_accuracy)  # type: ignore[arg-type]

    @property
    def higher_is_better(self) -> bool:
        return self.evaluate.higher_is_better

    def quantize(self, tune_cfg: TuneCfg) -> Any:
        loader = self.progress.batches(self.data.q_dataloader, "calibrate", tune_cfg["calibration"]["iterations"])
        return self.adaptor.quantize(tune_cfg, self.data.model, loader, self.data.q_func)

    def save_history(self) -> None:
        if self.strategy is not None:
            self.history.strategy_insights = self.strategy.insights
        self.history.save(self.workspace.history_path)

    def _step(self, what: str, inputs: Any, fn: Callable[[], Any]) -> Any:
        """Run one step on the FP32 model; if it raises, say which step failed (and on what batch), then re-raise."""
        try:
            return fn()
        except Exception as exc:  # without a baseline there is no goal: stop at once, with the user's own error
            raise_if_interrupted(exc)
            shown = f"; the batch's inputs: {describe_inputs(inputs)}" if inputs is not None else ""
            log.error("tuning stops before any trial: %s failed: %s: %s%s", what, type(exc).__name__, printable(exc),
                      printable(shown))
            if hasattr(exc, "add_note"):
                exc.add_note(f"ilit: this happened while {what}{shown}")
            raise

    def _meets(self, acc: float) -> bool:
        return not math.isnan(acc) and self.t_cfg.accuracy_criterion.met(acc, self.baseline_accuracy,
                                                                           self.higher_is_better)

    def _better(self, a: Trial, b: Trial) -> bool:
        """Whether trial ``a`` beats ``b``: by the ratio to FP32 measured beside each when both have one."""
        if a.ratio is not None and b.ratio is not None:
            return self.objective.better(a.ratio, b.ratio)
        return self.objective.better(a.objective, b.objective)

    def _check_limits(self) -> None:
        if len(self.history.trials) >= self.t_cfg.max_trials:
            raise _Stop(f"max_trials ({self.t_cfg.max_trials}) reached")
        if self.t_cfg.timeout > 0 and _now() - self.t0 >= self.t_cfg.timeout:
            raise _Stop(f"timeout ({self.t_cfg.timeout:g}s) reached")

    def _repeated_error(self) -> Optional[str]:
        last = self.history.trials[-REPEATED_ERRORS:]
        if len(last) == REPEATED_ERRORS and last[0].error and all(t.error == last[0].error for t in last):
            return last[0].error
        return None

    def _log_trial(self, t: Trial, source: str) -> None:
        base = self.baseline_accuracy
        rel = (t.accuracy - base) / abs(base) * 100 if base else float("nan")
        verdict = "error" if t.error else ("meets goal" if t.meets else "below goal")
        obj = "not measured" if math.isnan(t.objective) else self.objective.format(t.objective)
        if t.ratio is not None:
            obj += f" ({t.ratio:.3g}x FP32{'' if t.reliable else ', unreliable: busy machine'})"
        log.info("trial %d (%s): %s | accuracy %.4f (baseline %.4f, %+.2f%%) %s | %s %s | %.1fs, elapsed %.1fs",
                 t.trial, source, describe(t.tune_cfg), t.accuracy, base, rel, verdict, self.t_cfg.objective, obj,
                 t.quantize_s + t.evaluate_s + t.objective_s, t.elapsed_s)

    def _warn_no_result(self) -> None:
        crit, base = self.t_cfg.accuracy_criterion, self.baseline_accuracy
        ok = [t for t in self.history.trials if not t.error and not math.isnan(t.accuracy)]
        if not ok:
            log.warning("no config was tried (%s); history: %s", self.state.stop_reason,
                        printable(self.workspace.history_path))
            return
        closest = (max if self.higher_is_better else min)(ok, key=lambda t: t.accuracy)
        log.warning("no config met the accuracy goal (%s, i.e. accuracy %s %.4f). Closest: trial %d with "
                    "accuracy %.4f (%s). Loosen tuning.accuracy_criterion, raise max_trials/timeout, or "
                    "force sensitive ops to fp32 in tuning.ops. History: %s", crit.describe(),
                    ">=" if self.higher_is_better else "<=", crit.threshold(base, self.higher_is_better),
                    closest.trial, closest.accuracy, describe(closest.tune_cfg), printable(self.workspace.history_path))

    def _warn_if_not_better(self, best: Trial) -> None:
        """A returned model no better than FP32 on the objective is said so, loudly."""
        if best.ratio is None or self.objective.better(best.ratio, 1.0):
            return
        log.warning("the returned model (trial %d) is NOT better than the FP32 model on %s: %.3gx FP32%s. No "
                    "quantized config beat FP32 here; keep the FP32 model if %s is what matters.", best.trial,
                    self.t_cfg.objective, best.ratio, "" if best.reliable else " (measured on a busy machine)",
                    self.t_cfg.objective)


def _progress(max_trials: int, timeout: float) -> Any:
    """The status line on the terminal of ilit's own log handler (off if the app configured logging)."""
    from .progress import Progress, ProgressHandler

    handler = next((h for h in logging.getLogger("ilit").handlers if isinstance(h, ProgressHandler)), None)
    progress = Progress(handler.stream if handler is not None else None, max_trials, timeout, clock=lambda: _now())
    if handler is not None:
        handler.progress = progress
    return progress


def run_facts(adaptor: Adaptor, model: Any) -> Dict[str, Any]:
    """What a report says about the run: the adaptor, the versions in play and when it started."""
    versions = {"ilit": __version__, "python": platform.python_version(), "numpy": np.__version__}
    # the packages the model's classes come from (its framework, even for a model class defined in a script)
    modules = [c.__module__.split(".")[0] for c in (*type(model).__mro__, type(adaptor))]
    for module in dict.fromkeys(modules):
        version = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(version, str):
            versions.setdefault(module, str(version))
    return {"framework": adaptor.name or type(adaptor).__name__, "versions": versions,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _finite(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None

