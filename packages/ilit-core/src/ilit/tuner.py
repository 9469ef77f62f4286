"""The user API, ``Tuner``, and the accuracy-driven tuning loop."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from . import registry
from .adaptor import Adaptor
from .config import Config, load_config
from .errors import ConfigError, ResumeError
from .history import History, Trial
from .metric import Metric
from .objective import Objective
from .space import TuningSpace
from .strategy import Strategy, StrategyContext, TrialResult
from .tune_cfg import TuneCfg, cfg_fingerprint, describe, quantized_ops
from .workspace import prepare_workspace, save_atomic

__all__ = ["Tuner"]

log = logging.getLogger("ilit")
_now = time.perf_counter  # the clock of timeout and trial times (a test swaps it)
_MAX_REPLAYS = 100_000  # a strategy re-proposing known configs this many times in a row is stuck
#: the adaptor to try first for a model defined in these packages, when framework.name is not set
_MODULE_ADAPTORS = {"torch": "pytorch", "tensorflow": "tensorflow", "keras": "tensorflow", "mxnet": "mxnet"}


def _ensure_log_output() -> None:
    """Show the per-trial lines by default; an app that configured logging keeps its own setup."""
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [ilit] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _check_loader(loader: Any, name: str) -> Any:
    """The first batch's inputs of a usable loader; an empty or one-shot loader is refused before any calibration.

    A loader is iterated once per trial, so a one-shot iterator (a generator) would be empty from trial 2 on.
    """
    if isinstance(loader, Iterator):
        raise ValueError(f"{name} is a one-shot {type(loader).__name__}: ilit iterates it once per trial, so it would "
                         "be empty after the first; pass a list of batches or a re-iterable loader "
                         "(torch DataLoader, tf.data.Dataset, gluon DataLoader)")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} yielded no batches; give it at least one (inputs, labels) batch") from None
    except TypeError as exc:
        raise ValueError(f"{name} must be an iterable of (inputs, labels) batches, got "
                         f"{type(loader).__name__}: {exc}") from None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch


def as_score(value: Any, source: str) -> float:
    """``value`` as a finite float accuracy; anything else (NaN, a string, None, a bool) is a ValueError."""
    if isinstance(value, (str, bytes, bool)) or not hasattr(value, "__float__"):
        raise ValueError(f"{source} returned {value!r} ({type(value).__name__}); it must return a number "
                         "(the accuracy, higher is better)")
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:  # e.g. a tensor of several elements
        raise ValueError(f"{source} returned {type(value).__name__} that is not one number: {exc}") from None
    if not math.isfinite(score):
        raise ValueError(f"{source} returned {score}; it must return a finite number")
    return score


def _check_arguments(cfg: Config, q_dataloader: Any, q_func: Any, eval_dataloader: Any, eval_func: Any) -> Any:
    """Refuse bad arguments to ``tune`` before any work; return the inputs of a batch for the objective."""
    if eval_func is None and eval_dataloader is None:
        raise ValueError("tune() needs eval_dataloader (with tuning.metric in the config) or eval_func(model) -> float")
    if eval_func is not None and eval_dataloader is not None:
        raise ValueError("tune() got both eval_func and eval_dataloader; give one: eval_func(model) -> float, "
                         "or eval_dataloader with tuning.metric in the config")
    if eval_func is not None and not callable(eval_func):
        raise ValueError(f"eval_func must be a function model -> float, got {type(eval_func).__name__}")
    if q_func is not None and not callable(q_func):
        raise ValueError(f"q_func must be a function taking the model, got {type(q_func).__name__}")
    if eval_func is None and cfg.tuning.metric is None:
        raise ConfigError("tuning.metric", "an eval_dataloader needs a metric, e.g. 'metric: {topk: 1}'; "
                          "or pass eval_func instead")
    if q_dataloader is None:
        raise ValueError("tune() needs q_dataloader, an iterable of (inputs, labels) batches for calibration")
    if cfg.quantization.approach == "quant_aware_training" and q_func is None:
        raise ValueError("quantization.approach quant_aware_training needs q_func(model), your training loop, "
                         "which ilit calls on each prepared model; pass q_func or use post_training_static_quant")
    inputs = _check_loader(q_dataloader, "q_dataloader")  # a batch the objective measures the model on
    if eval_dataloader is not None:
        inputs = _check_loader(eval_dataloader, "eval_dataloader")
    return inputs


def _build_metric(spec: Any) -> Metric:
    name, args = spec
    cls = registry.load("metric", name)
    try:
        if args is None:
            return cls()
        if isinstance(args, Mapping):
            return cls(**args)
        if isinstance(args, (list, tuple)):
            return cls(*args)
        return cls(args)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"tuning.metric.{name}", f"the {name} metric does not take {args!r}: {exc}") from None


class Tuner:
    """Tune a model's quantization recipe until it meets the accuracy goal of a YAML config.

    ``Tuner(conf)`` takes a YAML path, an already-loaded dict, or an :class:`ilit.Config`.
    After ``tune`` the attributes ``baseline_accuracy``, ``baseline_objective``, ``best_trial``,
    ``history`` and ``history_path`` describe the run.
    """

    def __init__(self, conf: Union[str, "os.PathLike[str]", Mapping[str, Any], Config]) -> None:
        self.config: Config = load_config(conf)
        self._check_plugins()
        self.adaptor: Optional[Adaptor] = None
        self.history: Optional[History] = None
        self.history_path: Optional[str] = None
        self.best_trial: Optional[Trial] = None
        self.baseline_accuracy: Optional[float] = None
        self.baseline_objective: Optional[float] = None
        self.objective: Optional[Objective] = None

    # ------------------------------------------------------------------ plugin selection
    def _check_plugins(self) -> None:
        """Every plugin the config names must be installed, and the metric must take its arguments:
        a config error here costs a moment, not a calibration run."""
        t = self.config.tuning
        registry.require("strategy", t.strategy)
        registry.require("objective", t.objective)
        if self.config.framework.name:
            registry.require("adaptor", self.config.framework.name)
        if t.metric is not None:
            registry.require("metric", t.metric[0])
            _build_metric(t.metric)

    def _adaptor_class(self, model: Any) -> type:
        name = self.config.framework.name
        if name:
            cls = registry.load("adaptor", name)
            if not cls.accepts(model):
                kind = f"{type(model).__module__}.{type(model).__qualname__}"
                reason = cls.reject_reason(model)
                raise ConfigError("framework.name", f"is {name!r}, but the model given to tune() is a {kind}, which the "
                                  f"{name} adaptor does not take{f' ({reason})' if reason else ''}; pass a {name} "
                                  "model, or set framework.name to the model's framework (installed adaptors: "
                                  f"{', '.join(registry.installed('adaptor'))})")
            return cls
        # try the adaptor named for the model's own package first, so a torch model never imports TensorFlow
        installed = registry.installed("adaptor")
        for module in dict.fromkeys(c.__module__.split(".")[0] for c in type(model).__mro__):
            guess = _MODULE_ADAPTORS.get(module, module)
            if guess in installed:
                cls = registry.load("adaptor", guess)
                if cls.accepts(model):
                    return cls
                reason = cls.reject_reason(model)
                if reason:  # the model's own framework refuses it: no other adaptor (or framework) is loaded
                    raise ConfigError("framework.name", f"a {type(model).__module__}.{type(model).__qualname__} "
                                      f"model belongs to the {guess} adaptor, which does not take it ({reason})")
        loaded = registry.load_all("adaptor")
        for cls in loaded.values():
            if cls.accepts(model):
                return cls
        raise ConfigError("framework.name", f"could not tell which framework a {type(model).__module__}."
                          f"{type(model).__name__} model belongs to; set framework.name to one of the "
                          f"installed adaptors: {', '.join(loaded) or 'none (pip install ilit-pytorch, ...)'}")

    # ------------------------------------------------------------------ the loop
    def tune(self, model: Any, q_dataloader: Iterable[Any], q_func: Optional[Callable[[Any], Any]] = None,
             eval_dataloader: Optional[Iterable[Any]] = None, eval_func: Optional[Callable[[Any], float]] = None,
             resume_file: Optional[str] = None) -> Any:
        """Return the best quantized model meeting the accuracy criterion, or None if none does.

        Give either ``eval_dataloader`` (with ``tuning.metric`` in the config) or ``eval_func(model)``
        returning a float where higher is better. The FP32 ``model`` is never modified.
        """
        _ensure_log_output()
        cfg = self.config
        t_cfg = cfg.tuning
        # every check on the arguments, the workspace and the resume file runs before any calibration
        inputs = _check_arguments(cfg, q_dataloader, q_func, eval_dataloader, eval_func)
        workspace = os.path.abspath(t_cfg.workspace_path)
        prepare_workspace(workspace)
        old = History.load(resume_file) if resume_file else None

        adaptor: Adaptor = self._adaptor_class(model)(cfg)
        self.adaptor = adaptor
        strategy_cls = registry.load("strategy", t_cfg.strategy)
        strategy_cls.check(adaptor)
        objective: Objective = registry.load("objective", t_cfg.objective)()
        self.objective = objective
        metric = _build_metric(t_cfg.metric) if eval_func is None else None
        higher_is_better = metric.higher_is_better if metric is not None else True

        space = TuningSpace.build(adaptor.query_fw_capability(model), cfg)
        log.info("%s adaptor: %d quantizable ops, %d model-wise configs, strategy %s, objective %s",
                 adaptor.name or type(adaptor).__name__, len(space.ops), len(space.model_wise_configs()),
                 t_cfg.strategy, t_cfg.objective)

        def evaluate(m: Any) -> float:
            if eval_func is not None:
                return as_score(eval_func(m), "eval_func")
            return as_score(adaptor.evaluate(m, eval_dataloader, metric), f"the {t_cfg.metric[0]} metric")  # type: ignore[arg-type,index]

        def quantize(tune_cfg: TuneCfg) -> Any:
            return adaptor.quantize(tune_cfg, model, q_dataloader, q_func)

        self.history_path = hist_path = os.path.join(workspace, "history.json")
        best_dir = os.path.join(workspace, "best_model")
        history = History(config_fingerprint=cfg.search_fingerprint(), model_fingerprint=adaptor.fingerprint(model),
                          config=dict(cfg.raw), metric_higher_is_better=higher_is_better, objective=t_cfg.objective)
        self.history = history
        done: Dict[str, Trial] = {}
        if old is not None:
            if old.config_fingerprint != history.config_fingerprint:
                raise ResumeError(f"resume_file {resume_file!r} was written with a different config "
                                  "(only tuning.timeout, tuning.max_trials and tuning.workspace may change); "
                                  "start without resume_file or use the original YAML")
            if old.model_fingerprint != history.model_fingerprint:
                raise ResumeError(f"resume_file {resume_file!r} was written for a different model; "
                                  "resume with the same FP32 model or start without resume_file")
            done = {t.fingerprint: t for t in old.trials}
            history.baseline_accuracy, history.baseline_objective = old.baseline_accuracy, old.baseline_objective
            log.info("resuming from %s: %d trials already done", resume_file, len(done))

        t0 = _now()
        if history.baseline_accuracy is None:
            try:
                with adaptor.fp32_context(model):  # the user's model leaves in the mode it came in
                    history.baseline_accuracy = evaluate(model)
                    history.baseline_objective = objective.measure(model, adaptor, inputs)
            except Exception as exc:  # without a baseline there is no goal: stop at once, with the user's error
                log.error("the FP32 baseline failed, so tuning stops: %s: %s", type(exc).__name__, exc)
                raise
        baseline = float(history.baseline_accuracy)
        self.baseline_accuracy, self.baseline_objective = baseline, history.baseline_objective
        criterion = t_cfg.accuracy_criterion
        log.info("FP32 baseline: accuracy %.4f, %s %s; goal: %s (accuracy %s %.4f)", baseline, t_cfg.objective,
                 objective.format(float(history.baseline_objective)), criterion.describe(),
                 ">=" if higher_is_better else "<=", criterion.threshold(baseline, higher_is_better))
        history.save(hist_path)

        context = StrategyContext(baseline=baseline, higher_is_better=higher_is_better, adaptor=adaptor, model=model,
                                  calib_dataloader=q_dataloader, quantize=quantize, seed=t_cfg.random_seed)
        strategy: Strategy = strategy_cls(space, cfg, context)

        best: Optional[Trial] = None
        best_model: Any = None
        seen: Dict[str, Trial] = {}
        replays = 0
        stop_reason = "the strategy's space is exhausted"
        gen = strategy.configs()
        try:
            for proposed in gen:
                tune_cfg = adaptor.canonical_cfg(proposed)  # what is run and recorded; the strategy sees its own
                fp = cfg_fingerprint(tune_cfg)
                if fp in seen:  # never evaluate the same config (or one building the same model) twice
                    replays += 1
                    if replays > _MAX_REPLAYS:
                        stop_reason = "the strategy kept proposing configs already evaluated"
                        break
                    t = seen[fp]
                    strategy.observe(proposed, TrialResult(t.accuracy, t.objective, t.meets))
                    continue
                replays = 0
                if not quantized_ops(tune_cfg):  # all-fp32 is the baseline, not a quantized model
                    strategy.observe(proposed, TrialResult(math.nan, math.nan, False))
                    continue
                if len(history.trials) >= t_cfg.max_trials:
                    stop_reason = f"max_trials ({t_cfg.max_trials}) reached"
                    break
                if t_cfg.timeout > 0 and _now() - t0 >= t_cfg.timeout:
                    stop_reason = f"timeout ({t_cfg.timeout:g}s) reached"
                    break
                q_model = None
                if fp in done:  # replayed from the resumed history
                    old_t = done[fp]
                    trial = Trial(**{**old_t.__dict__, "trial": len(history.trials) + 1})
                    source = "resumed"
                else:
                    trial, q_model = self._run_trial(len(history.trials) + 1, tune_cfg, quantize, evaluate, objective,
                                                     adaptor, inputs, baseline, higher_is_better, t0)
                    source = "ran"
                history.trials.append(trial)
                seen[fp] = trial
                self._log_trial(trial, baseline, objective, source)
                if trial.meets and (best is None or objective.better(trial.objective, best.objective)):
                    best, best_model = trial, q_model
                    history.best = trial.trial
                    if q_model is not None:
                        save_atomic(adaptor.save, q_model, best_dir)
                history.save(hist_path)
                strategy.observe(proposed, TrialResult(trial.accuracy, trial.objective, trial.meets))
                if trial.meets and t_cfg.timeout == 0:
                    stop_reason = "a config met the accuracy goal (timeout 0: stop at the first)"
                    break
        except KeyboardInterrupt:
            history.save(hist_path)  # every finished trial is kept; the one interrupted is not
            log.warning("interrupted after %d trials; the history is saved. Continue with tune(..., resume_file=%r)%s",
                        len(history.trials), hist_path, f"; best model so far: {best_dir}" if best and os.path.exists(best_dir) else "")
            raise
        finally:
            gen.close()

        history.finished = True
        history.save(hist_path)
        self.best_trial = best
        log.info("stopped: %s", stop_reason)
        log.info("%s", self.summary())
        if history.trials and all(t.error for t in history.trials):
            raise RuntimeError(f"every trial failed; the first error was: {history.trials[0].error}. "
                               f"History: {hist_path}")
        if best is None:
            closest = self._closest(history.trials, higher_is_better)
            if closest is None:
                log.warning("no config was tried (%s); history: %s", stop_reason, hist_path)
            else:
                log.warning("no config met the accuracy goal (%s, i.e. accuracy %s %.4f). Closest: trial %d with "
                            "accuracy %.4f (%s). Loosen tuning.accuracy_criterion, raise max_trials/timeout, or "
                            "force sensitive ops to fp32 in tuning.ops. History: %s", criterion.describe(),
                            ">=" if higher_is_better else "<=", criterion.threshold(baseline, higher_is_better),
                            closest.trial, closest.accuracy, describe(closest.tune_cfg), hist_path)
            return None
        if best_model is None:  # the best trial came from a resumed history: rebuild it
            best_model = quantize(best.tune_cfg)
            save_atomic(adaptor.save, best_model, best_dir)
        return best_model

    # ------------------------------------------------------------------ helpers
    def _run_trial(self, number: int, tune_cfg: TuneCfg, quantize: Callable[[TuneCfg], Any],
                   evaluate: Callable[[Any], float], objective: Objective, adaptor: Adaptor, inputs: Any,
                   baseline: float, higher_is_better: bool, t0: float) -> Any:
        crit = self.config.tuning.accuracy_criterion
        tq = _now()
        q_model, error = None, None
        acc = obj = math.nan
        te = to = tq
        try:
            q_model = quantize(tune_cfg)
            te = _now()
            acc = evaluate(q_model)
            to = _now()
            if not math.isnan(acc) and crit.met(acc, baseline, higher_is_better):
                obj = objective.measure(q_model, adaptor, inputs)  # only a passing model can be the best
        except Exception as exc:  # noqa: BLE001 - one bad config must not end hours of tuning
            error = f"{type(exc).__name__}: {exc}"
            log.warning("trial %d failed and is skipped: %s", number, error, exc_info=log.isEnabledFor(logging.DEBUG))
            q_model = None
        tend = _now()
        meets = error is None and not math.isnan(acc) and crit.met(acc, baseline, higher_is_better)
        trial = Trial(trial=number, tune_cfg=tune_cfg, accuracy=acc, objective=obj, meets=meets,
                      quantize_s=max(0.0, te - tq), evaluate_s=max(0.0, to - te) if error is None else 0.0,
                      objective_s=max(0.0, tend - to) if error is None else 0.0, elapsed_s=tend - t0, error=error)
        return trial, q_model

    def _log_trial(self, t: Trial, baseline: float, objective: Objective, source: str) -> None:
        rel = (t.accuracy - baseline) / abs(baseline) * 100 if baseline else float("nan")
        verdict = "error" if t.error else ("meets goal" if t.meets else "below goal")
        obj = "not measured" if math.isnan(t.objective) else objective.format(t.objective)
        log.info("trial %d (%s): %s | accuracy %.4f (baseline %.4f, %+.2f%%) %s | %s %s | %.1fs, elapsed %.1fs",
                 t.trial, source, describe(t.tune_cfg), t.accuracy, baseline, rel, verdict,
                 self.config.tuning.objective, obj,
                 t.quantize_s + t.evaluate_s + t.objective_s, t.elapsed_s)

    @staticmethod
    def _closest(trials: List[Trial], higher_is_better: bool) -> Optional[Trial]:
        ok = [t for t in trials if not t.error and not math.isnan(t.accuracy)]
        if not ok:
            return None
        return (max if higher_is_better else min)(ok, key=lambda t: t.accuracy)

    def summary(self) -> str:
        """A table of every trial of the last run, the FP32 baseline first and the best marked."""
        h = self.history
        if h is None:
            return "no tuning run yet"
        obj = self.objective
        fmt = obj.format if obj is not None else (lambda v: f"{v:.4g}")
        rows = [("trial", "accuracy", h.objective, "goal", "config")]
        rows.append(("fp32", f"{h.baseline_accuracy:.4f}", fmt(float(h.baseline_objective or 0)), "-", "baseline"))
        for t in h.trials:
            mark = "*" if t.trial == h.best else ""
            rows.append((f"{t.trial}{mark}", f"{t.accuracy:.4f}", "-" if math.isnan(t.objective) else fmt(t.objective),
                         "error" if t.error else ("yes" if t.meets else "no"), describe(t.tune_cfg)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["tuning summary (* = returned model):"]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        return "\n".join(lines)
