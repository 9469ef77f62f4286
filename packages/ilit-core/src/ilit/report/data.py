"""What a report shows, read from a ``history.json``: trials, run facts, goal, Pareto front and per-op data.

The reader is lenient where :meth:`ilit.History.load` is strict: a report must render histories of older
and newer ilit versions alike, so missing optional keys are tolerated and unknown ones ignored. It keeps
the safety of the strict reader: plain JSON only (never unpickled), bounded in size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import ConfigError
from ..tune_cfg import describe, fallback_ops, quantized_ops

__all__ = ["ReportError", "TrialRow", "RunData", "load_run", "find_history", "pareto_front"]

_MAX_BYTES = 256 << 20
#: insights keys holding one number per op, with how to read them (title, column, what a larger value means)
OP_INSIGHTS = {
    "op_sensitivity": ("Accuracy each op's FP32 fallback recovered", "accuracy recovered",
                       "basic's probe: falling back this op alone to FP32 recovered this much accuracy"),
    "op_error": ("Error each op adds when quantized", "normalised MSE added",
                 "mse's ranking: the normalised squared error this op adds to its input's error"),
    "derived_op_sensitivity": ("Accuracy each op's FP32 fallback recovered (from the trials)", "accuracy recovered",
                               "the run recorded no per-op data, so this is read from its trials: the accuracy of "
                               "a trial falling back this op alone, minus that of the same config fully quantized"),
}


class ReportError(ValueError):
    """The path given to the report is not a workspace or history.json it can read; the message says why."""


@dataclass
class TrialRow:
    """One trial as the report shows it; NaN is a value that was not measured."""

    number: int
    accuracy: float
    objective: float
    meets: bool
    error: Optional[str]
    quantize_s: float
    evaluate_s: float
    objective_s: float
    elapsed_s: float
    config: str
    int8_ops: int
    fp32_ops: List[str]
    ratio: float = math.nan
    spread: float = math.nan
    reliable: Optional[bool] = None
    resumed: bool = False
    best: bool = False
    phase: Optional[str] = None

    @property
    def seconds(self) -> float:
        return self.quantize_s + self.evaluate_s + self.objective_s


@dataclass
class RunData:
    """Everything a report renders, derived from one history file."""

    path: str
    raw: Dict[str, Any]
    trials: List[TrialRow]
    baseline_accuracy: float
    baseline_objective: float
    higher_is_better: bool
    objective: str
    objective_higher_is_better: bool
    objective_unit: str
    threshold: float
    criterion: str
    strategy: str
    framework: str
    versions: Dict[str, str]
    stop_reason: Optional[str]
    finished: bool
    best: Optional[int]
    phases: List[Tuple[str, float]]
    op_data: Dict[str, Dict[str, float]] = field(default_factory=dict)
    other_insights: Dict[str, Any] = field(default_factory=dict)
    format: Any = None

    @property
    def best_trial(self) -> Optional[TrialRow]:
        return next((t for t in self.trials if t.best), None)

    def format_objective(self, value: float) -> str:
        """The objective as the tuner's log prints it (the objective plugin's own format when installed)."""
        if value is None or not math.isfinite(value):
            return "-"
        return _objective_formatter(self.objective)(value)


def find_history(path: Union[str, "os.PathLike[str]"]) -> str:
    """The history.json for a workspace directory or a history file path; ReportError if there is none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, "history.json")
        if not os.path.isfile(candidate):
            raise ReportError(f"{path!r} is a directory without a history.json; pass an ilit workspace "
                              "(tuning.workspace.path) or the history.json file itself")
        return candidate
    if not os.path.exists(path):
        raise ReportError(f"{path!r} does not exist; pass an ilit workspace directory or its history.json")
    return path


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except OSError as exc:
        raise ReportError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_BYTES:
        raise ReportError(f"{path!r} is over {_MAX_BYTES >> 20} MB, far more than any ilit history")
    if raw[:1] == b"\x80" or raw[:2] in (b"PK", b"\x1f\x8b"):
        raise ReportError(f"{path!r} is a binary file (a pickle or an archive?), not a history.json; "
                          "ilit never unpickles")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ReportError(f"{path!r} is not a valid history.json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list) or "format" not in data:
        raise ReportError(f"{path!r} is JSON but not an ilit history (no 'format' and 'trials'); "
                          "pass the history.json an ilit run wrote in its workspace")
    return data


def _num(value: Any) -> float:
    """A finite float, or NaN for null, strings and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _objective_formatter(name: str) -> Any:
    try:
        from .. import registry

        return registry.load("objective", name)().format
    except Exception:  # noqa: BLE001 - a plugin not installed here: plain numbers still render
        return lambda v: f"{v:.4g}"


def _objective_traits(name: str) -> Tuple[bool, str]:
    try:
        from .. import registry

        cls = registry.load("objective", name)
        return bool(cls.higher_is_better), str(cls.unit)
    except Exception:  # noqa: BLE001
        return False, ""


def _criterion(config: Mapping[str, Any], baseline: float, higher: bool) -> Tuple[float, str]:
    """The accuracy threshold and its description, from the run's config (defaults when absent)."""
    from ..config import AccuracyCriterion, load_config

    try:
        crit = load_config(config).tuning.accuracy_criterion
    except (ConfigError, TypeError, ValueError):  # a config of another ilit version: read the two keys by hand
        raw = (config.get("tuning") or {}).get("accuracy_criterion") or {}
        crit = (AccuracyCriterion(relative=None, absolute=float(raw["absolute"])) if "absolute" in raw
                else AccuracyCriterion(relative=float(raw.get("relative", 0.01))))
    if math.isnan(baseline):
        return math.nan, crit.describe()
    return crit.threshold(baseline, higher), crit.describe()


def _phases(trials: List[TrialRow], run: Mapping[str, Any]) -> List[Tuple[str, float]]:
    phases: List[Tuple[str, float]] = []
    if isinstance(run.get("baseline_s"), (int, float)):
        phases.append(("FP32 baseline (evaluate + objective)", float(run["baseline_s"])))
    ran = [t for t in trials if not t.resumed]
    phases += [("quantize (incl. calibration)", sum(t.quantize_s for t in ran)),
               ("evaluate", sum(t.evaluate_s for t in ran)),
               ("objective", sum(t.objective_s for t in ran))]
    if isinstance(run.get("total_s"), (int, float)):
        phases.append(("whole run", float(run["total_s"])))
    elif ran:
        phases.append(("whole run (to the last trial)", max(t.elapsed_s for t in ran)))
    return phases


def _phase_of(insights: Mapping[str, Any]) -> Dict[int, str]:
    phase = insights.get("phase")
    out: Dict[int, str] = {}
    if isinstance(phase, dict):
        for k, v in phase.items():
            try:
                out[int(k)] = str(v)
            except (TypeError, ValueError):
                continue
    elif isinstance(phase, list):  # one entry per trial, in order
        out = {i + 1: str(v) for i, v in enumerate(phase) if v is not None}
    return out


def _op_data(insights: Mapping[str, Any]) -> Dict[str, Dict[str, float]]:
    out = {}
    for key in OP_INSIGHTS:
        values = insights.get(key)
        if isinstance(values, dict):
            nums = {str(op): _num(v) for op, v in values.items()}
            nums = {op: v for op, v in nums.items() if not math.isnan(v)}
            if nums:
                out[key] = dict(sorted(nums.items(), key=lambda kv: -kv[1]))
    return out


def derived_sensitivity(trials: List[Dict[str, Any]]) -> Dict[str, float]:
    """Per op, the accuracy a single-op fallback trial recovered over the same config with every op quantized.

    Works on any history whose strategy probed single ops (basic does); the best pair per op is kept.
    """
    def key(cfg: Mapping[str, Any], skip: str) -> str:
        ops = {n: o for n, o in cfg.get("ops", {}).items() if n != skip}
        return json.dumps([ops, cfg.get("calibration"), cfg.get("approach")], sort_keys=True, default=str)

    full: Dict[str, float] = {}
    singles = []
    for t in trials:
        cfg, acc = t.get("tune_cfg"), _num(t.get("accuracy"))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("ops"), dict) or math.isnan(acc):
            continue
        try:
            fb = fallback_ops(cfg)
        except (KeyError, TypeError, AttributeError):
            continue
        if not fb:
            for name in cfg["ops"]:
                full.setdefault(key(cfg, name), acc)
        elif len(fb) == 1:
            singles.append((fb[0], key(cfg, fb[0]), acc))
    out: Dict[str, float] = {}
    for op, k, acc in singles:
        if k in full:
            out[op] = max(out.get(op, -math.inf), acc - full[k])
    return out


def _dict(value: Any) -> Dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a history from another version may lack it)."""
    return value if isinstance(value, dict) else {}


def load_run(path: Union[str, "os.PathLike[str]"]) -> RunData:
    """Read a workspace or history.json into what a report renders; ReportError if it is not a history."""
    hist_path = find_history(path)
    return run_from_dict(_read_json(hist_path), hist_path)


def run_from_dict(data: Dict[str, Any], hist_path: str = "") -> RunData:
    """What a report renders, from a history's JSON data (``History.to_dict()`` or a parsed history.json)."""
    run = _dict(data.get("run"))
    insights = _dict(data.get("strategy_insights"))
    config = _dict(data.get("config"))
    tuning = _dict(config.get("tuning"))
    higher = data.get("metric_higher_is_better", True) is not False
    objective = str(data.get("objective") or tuning.get("objective") or "performance")
    obj_higher, unit = _objective_traits(objective)
    resumed = {n for n in run.get("resumed_trials", []) if isinstance(n, int)} if isinstance(
        run.get("resumed_trials"), list) else set()
    phase_of = _phase_of(insights)
    best_raw = data.get("best")
    best = best_raw if isinstance(best_raw, int) else None
    trials = []
    for i, t in enumerate(data["trials"]):
        if not isinstance(t, dict):
            raise ReportError(f"{hist_path!r}: trials[{i}] is not an object; the file is not an ilit history")
        number_raw = t.get("trial")
        number = number_raw if isinstance(number_raw, int) else i + 1
        cfg = _dict(t.get("tune_cfg"))
        try:
            text, n_int8, fb = describe(cfg), len(quantized_ops(cfg)), list(fallback_ops(cfg))
        except (KeyError, TypeError, AttributeError):
            text, n_int8, fb = "(config not readable)", 0, []
        trials.append(TrialRow(
            number=number, accuracy=_num(t.get("accuracy")), objective=_num(t.get("objective")),
            meets=t.get("meets") is True, error=t.get("error") if isinstance(t.get("error"), str) else None,
            quantize_s=_num(t.get("quantize_s")) if t.get("quantize_s") is not None else 0.0,
            evaluate_s=_num(t.get("evaluate_s")) if t.get("evaluate_s") is not None else 0.0,
            objective_s=_num(t.get("objective_s")) if t.get("objective_s") is not None else 0.0,
            elapsed_s=_num(t.get("elapsed_s")) if t.get("elapsed_s") is not None else 0.0,
            config=text, int8_ops=n_int8, fp32_ops=fb, ratio=_num(t.get("ratio")), spread=_num(t.get("spread")),
            reliable=t.get("reliable") if isinstance(t.get("reliable"), bool) else None,
            resumed=number in resumed, best=number == best, phase=phase_of.get(number)))
    baseline = _num(data.get("baseline_accuracy"))
    threshold, crit_text = _criterion(config, baseline, higher)
    versions = {str(k): str(v) for k, v in run.get("versions", {}).items()} if isinstance(
        run.get("versions"), dict) else {}
    versions.setdefault("ilit", str(data.get("ilit_version", "?")))
    framework = run.get("framework") or (config.get("framework") or {}).get("name") or "not recorded"
    return RunData(
        path=hist_path, raw=data, trials=trials, baseline_accuracy=baseline,
        baseline_objective=_num(data.get("baseline_objective")), higher_is_better=higher, objective=objective,
        objective_higher_is_better=obj_higher, objective_unit=unit, threshold=threshold, criterion=crit_text,
        strategy=str(tuning.get("strategy", "basic")), framework=str(framework), versions=versions,
        stop_reason=next((r for r in (data.get("stop_reason"), run.get("stop_reason")) if isinstance(r, str)), None),
        finished=data.get("finished") is True, best=best, phases=_phases(trials, run),
        op_data=_op_data(insights) or _op_data({"derived_op_sensitivity": derived_sensitivity(data["trials"])}),
        other_insights={k: v for k, v in insights.items() if k not in OP_INSIGHTS and k != "phase"},
        format=data.get("format"))


def pareto_front(points: List[Tuple[int, float, float]], higher_accuracy: bool = True,
                 higher_objective: bool = False) -> List[int]:
    """The ids of the non-dominated ``(id, objective, accuracy)`` points, ordered by objective (best first).

    A point is dominated when another is at least as good in both and strictly better in one.
    """
    def key(p: Tuple[int, float, float]) -> Tuple[float, float]:  # both as "smaller is better"
        return (-p[1] if higher_objective else p[1], -p[2] if higher_accuracy else p[2])

    front: List[int] = []
    best_acc = math.inf
    for p in sorted(points, key=key):
        o, a = key(p)
        if a < best_acc:
            front.append(p[0])
            best_acc = a
    return front
