"""The user API, ``Tuner``: a config checked up front, then one :class:`ilit.run.TuningRun` per ``tune`` call."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import registry
from .arguments import check_arguments, check_loader
from .batches import batch_inputs
from .config import Config, load_config
from .detect import adaptor_class
from .evaluation import Evaluator, build_metric
from .history import History, Trial
from .interrupts import watch_interrupts
from .logs import ensure_log_output
from .objective import Objective
from .run import RunData, TuningRun
from .workspace import Workspace

__all__ = ["Tuner"]



class Tuner:
    """Tune a model's quantization recipe until it meets the accuracy goal of a YAML config.

    ``Tuner(conf)`` takes a YAML path, an already-loaded dict, or an :class:`ilit.Config`.
    After ``tune`` the attributes ``baseline_accuracy``, ``baseline_objective``, ``best_trial``,
    ``history`` and ``history_path`` describe the run.
    """

    def __init__(self, conf: Union[str, "os.PathLike[str]", Mapping[str, Any], Config]) -> None:
        self.config: Config = load_config(conf)
        self._check_plugins()
        self.run: Optional[TuningRun] = None

    def _check_plugins(self) -> None:
        """Every plugin the config names must be installed, and the metric must take its arguments:
        a config error here costs a moment, not a calibration run.

        The strategy, objective and metric are imported here, so one that fails to import raises
        :class:`ilit.PluginLoadError` at ``Tuner()``; the adaptor, which imports its framework, is only
        checked to be installed here and is imported by ``tune``."""
        t = self.config.tuning
        if self.config.framework.name:
            registry.require("adaptor", self.config.framework.name)
        self._strategy_cls = registry.load("strategy", t.strategy)
        self._objective_cls = registry.load("objective", t.objective)
        if t.metric is not None:
            build_metric(t.metric)

    def tune(self, model: Any, q_dataloader: Iterable[Any], q_func: Optional[Callable[[Any], Any]] = None,
             eval_dataloader: Optional[Iterable[Any]] = None, eval_func: Optional[Callable[[Any], float]] = None,
             resume_file: Optional[str] = None, postprocess: Optional[Callable[[Any], Any]] = None) -> Any:
        """Return the best quantized model meeting the accuracy criterion, or None if none does.

        Give either ``eval_dataloader`` (with ``tuning.metric`` in the config) or ``eval_func(model)``
        returning a float where higher is better. The FP32 ``model`` is never modified.
        ``postprocess(outputs) -> preds`` (eval_dataloader only) turns each batch's model outputs, as numpy,
        into what the metric takes, e.g. a detector's raw heads into cocomap's per-image box dicts.
        """
        ensure_log_output()
        cfg = self.config
        # every check on the arguments, the workspace and the resume file runs before any calibration
        check_arguments(cfg, q_dataloader, q_func, eval_dataloader, eval_func, postprocess)
        # each loader's first batch, drawn once: calibration data is run on the FP32 model before any trial, and
        # the objective times models on the evaluation data's first batch (the calibration data's without one)
        calib_inputs = batch_inputs(check_loader(q_dataloader, "q_dataloader"))
        timing_inputs = (batch_inputs(check_loader(eval_dataloader, "eval_dataloader"))
                         if eval_dataloader is not None else calib_inputs)
        workspace = Workspace(cfg.tuning.workspace_path)
        # one run per workspace, held until the best model and history are written; Ctrl-C always stops it
        with workspace.lock(), watch_interrupts():
            workspace.prepare()
            resumed = History.load(resume_file, cfg.tuning.accuracy_criterion) if resume_file else None
            adaptor = adaptor_class(cfg.framework.name, model)(cfg)
            adaptor.example_inputs = calib_inputs  # before query_fw_capability, which may need an example
            strategy_cls = self._strategy_cls
            strategy_cls.check(adaptor)
            objective: Objective = self._objective_cls()
            data = RunData(model=model, q_dataloader=q_dataloader, q_func=q_func,
                           timing_inputs=timing_inputs, calib_inputs=calib_inputs)
            self.run = run = TuningRun(cfg, adaptor, strategy_cls, objective,
                                       Evaluator(adaptor, eval_func, eval_dataloader, cfg.tuning.metric, postprocess),
                                       workspace, data, resumed, resume_file)
            run.check_inputs()
            run.baseline()
            run.search()
            try:
                return run.finish()
            finally:
                _log_summary(self.summary())

    # ------------------------------------------------------------------ what the last run left
    @property
    def adaptor(self) -> Any:
        return self.run.adaptor if self.run else None

    @property
    def objective(self) -> Optional[Objective]:
        return self.run.objective if self.run else None

    @property
    def history(self) -> Optional[History]:
        return self.run.history if self.run else None

    @property
    def history_path(self) -> Optional[str]:
        return self.run.workspace.history_path if self.run else None

    @property
    def best_trial(self) -> Optional[Trial]:
        return self.run.state.best if self.run and self.run.history.finished else None

    @property
    def baseline_accuracy(self) -> Optional[float]:
        h = self.history
        return None if h is None or h.baseline_accuracy is None else float(h.baseline_accuracy)

    @property
    def baseline_objective(self) -> Optional[float]:
        h = self.history
        return None if h is None else h.baseline_objective

    def summary(self) -> str:
        """A table of every trial of the last run, the FP32 baseline first and the best marked (``ilit history``)."""
        h = self.history
        if h is None or h.baseline_accuracy is None:
            return "no tuning run yet"
        from .report import run_from_dict, summary_table

        return summary_table(run_from_dict(h.to_dict(), self.history_path or ""))


def _log_summary(text: str) -> None:
    logging.getLogger(__name__).info("%s", text)
