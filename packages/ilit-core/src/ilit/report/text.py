"""Plain-text renderings of a run: the summary table (``ilit history``) and the Markdown report."""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence

import yaml

from .data import OP_INSIGHTS, RunData, TrialRow

__all__ = ["summary_table", "markdown_report", "verdict", "facts"]


def verdict(t: TrialRow) -> str:
    return "error" if t.error else ("yes" if t.meets else "no")


def _acc(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def summary_table(run: RunData) -> str:
    """The trial table (``Tuner.summary()`` and ``ilit history``): the FP32 baseline first, the best marked."""
    rows = [("trial", "accuracy", run.objective, "vs fp32", "goal", "config")]
    rows.append(("fp32", _acc(run.baseline_accuracy), run.format_objective(run.baseline_objective), "1x", "-",
                 "baseline"))
    for t in run.trials:
        mark = ("*" if t.best else "") + ("r" if t.resumed else "")
        ratio = "-" if math.isnan(t.ratio) else f"{t.ratio:.3g}x" + ("" if t.reliable else "?")
        rows.append((f"{t.number}{mark}", _acc(t.accuracy), run.format_objective(t.objective), ratio, verdict(t),
                     t.config))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    resumed = ", r = resumed from an earlier run" if any(t.resumed for t in run.trials) else ""
    lines = [f"tuning summary (* = returned model; ? = measured on a busy machine{resumed}):"]
    for r in rows:
        lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    best = run.best_trial
    if best is not None and not math.isnan(best.ratio) and not _better(best.ratio, 1.0, run.objective_higher_is_better):
        lines.append(f"  NOTE: the returned model is not better than FP32 on {run.objective} ({best.ratio:.3g}x)")
    return "\n".join(lines)


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def facts(run: RunData) -> List[tuple]:
    """(label, value) pairs: what ran, with what, against what goal, and how it ended."""
    best = run.best_trial
    goal_op = ">=" if run.higher_is_better else "<="
    out = [
        ("history", run.path),
        ("framework", run.framework),
        ("versions", ", ".join(f"{k} {v}" for k, v in run.versions.items())),
        ("strategy", run.strategy),
        ("objective", f"{run.objective} ({'higher' if run.objective_higher_is_better else 'lower'} is better)"),
        ("FP32 baseline", f"accuracy {_acc(run.baseline_accuracy)}, {run.objective} "
                          f"{run.format_objective(run.baseline_objective)}"),
        ("accuracy goal", f"{run.criterion}: accuracy {goal_op} {_acc(run.threshold)}"),
        ("trials", f"{len(run.trials)} ({sum(t.meets for t in run.trials)} met the goal, "
                   f"{sum(bool(t.error) for t in run.trials)} failed, {sum(t.resumed for t in run.trials)} resumed)"),
        ("returned model", f"trial {best.number}: accuracy {_acc(best.accuracy)}, {run.objective} "
                           f"{run.format_objective(best.objective)}" if best else "none met the goal"),
        ("stop reason", run.stop_reason or ("not recorded by this ilit version" if run.finished
                                            else "the run did not finish (interrupted or still running)")),
    ]
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def trial_rows(run: RunData) -> List[List[str]]:
    """The trial table's cells (shared by the Markdown and HTML reports)."""
    show_ratio = any(not math.isnan(t.ratio) for t in run.trials)
    show_phase = any(t.phase for t in run.trials)
    rows = []
    for t in run.trials:
        delta = t.accuracy - run.baseline_accuracy
        row = [f"{t.number}{' (returned)' if t.best else ''}{' (resumed)' if t.resumed else ''}", _acc(t.accuracy),
               "-" if math.isnan(delta) else f"{delta:+.4f}", run.format_objective(t.objective)]
        if show_ratio:
            row.append("-" if math.isnan(t.ratio) else f"{t.ratio:.3f}" + (
                f" ±{t.spread:.1%}" if not math.isnan(t.spread) else "") + (" (unreliable)" if t.reliable is False
                                                                            else ""))
        row.append(verdict(t))
        if show_phase:
            row.append(t.phase or "")
        row += [f"{t.seconds:.2f}", t.config, t.error or ""]
        rows.append(row)
    return rows


def trial_header(run: RunData) -> List[str]:
    header = ["trial", "accuracy", "vs FP32", run.objective]
    if any(not math.isnan(t.ratio) for t in run.trials):
        header.append("ratio to FP32")
    header.append("meets goal")
    if any(t.phase for t in run.trials):
        header.append("phase")
    return header + ["time (s)", "config", "error"]


def op_rows(values: Dict[str, float], limit: Optional[int] = None) -> List[List[str]]:
    items = list(values.items())[:limit]
    return [[str(i + 1), op, f"{v:.4g}"] for i, (op, v) in enumerate(items)]


def markdown_report(run: RunData, images: Optional[Dict[str, str]] = None) -> str:
    """The report as Markdown: facts, phases, per-op data and the trial table; ``images`` maps chart -> file."""
    images = images or {}
    out = ["# ilit tuning report", ""]
    out.append(_md_table(["", ""], [[k, v] for k, v in facts(run)]))
    out += ["", "## Time per phase", "", _md_table(["phase", "seconds"], [[p, f"{s:.2f}"] for p, s in run.phases])]
    for name, title in (("trials", "Trials"), ("pareto", "Accuracy against objective")):
        if name in images:
            out += ["", f"## {title}", "", f"![{title}]({images[name]})"]
    for key, values in run.op_data.items():
        title, column, meaning = OP_INSIGHTS[key]
        out += ["", f"## {title}", "", meaning + ".", ""]
        if key in images:
            out += [f"![{title}]({images[key]})", ""]
        out.append(_md_table(["rank", "op", column], op_rows(values)))
    if not run.op_data:
        out += ["", "## Per-op sensitivity", "", _no_op_data(run)]
    out += ["", "## Trial table", "", _md_table(trial_header(run), trial_rows(run))]
    if run.other_insights:
        out += ["", "## Other strategy insights", "", "```json", json.dumps(run.other_insights, indent=1,
                                                                              default=str)[:20000], "```"]
    out += ["", "## Config", "", "```yaml", yaml.safe_dump(run.raw.get("config", {}), sort_keys=False).rstrip(),
            "```", ""]
    return "\n".join(out)


def _no_op_data(run: RunData) -> str:
    return (f"This run recorded no per-op data (strategy {run.strategy}, ilit {run.versions.get('ilit', '?')}). "
            "The basic strategy records the accuracy each op's fallback recovers once it probes single ops, "
            "and mse the error each op adds; a run that met the goal with a model-wise config never gets there.")
