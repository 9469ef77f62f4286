"""The report's charts as PNG bytes, drawn with matplotlib (the ``ilit-core[report]`` extra).

matplotlib is imported here only, when a chart is drawn, and through its object API (``Figure`` on an Agg
canvas), so an application's own pyplot backend is never changed.
"""

from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Tuple

from .data import OP_INSIGHTS, RunData, pareto_front

__all__ = ["MissingPlotting", "draw_charts", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'ilit-core[report]'"
_MAX_OPS = 30  # bars per per-op chart; the table lists them all
_PASS, _FAIL, _BELOW, _OBJ, _BEST = "#2a9d4b", "#d62728", "#8c8c8c", "#1f5fbf", "#f2a900"


class MissingPlotting(ImportError):
    """matplotlib is not installed; the message gives the pip command."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPlotting(f"the report's charts need matplotlib: {INSTALL_HINT}") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _finite(v: float) -> bool:
    return v is not None and math.isfinite(v)


def trials_chart(run: RunData) -> bytes:
    """Accuracy per trial against the goal line, the objective on a second axis, failed/resumed/returned marked."""
    fig = _figure(9, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    ts = run.trials
    xs = [t.number for t in ts]
    accs = [t.accuracy for t in ts]
    finite = [a for a in accs if _finite(a)] + [v for v in (run.baseline_accuracy, run.threshold) if _finite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = max(hi - lo, 1e-3) * 0.15
    floor = lo - pad
    ax.plot(xs, [a if _finite(a) else float("nan") for a in accs], color="#555555", lw=0.8, zorder=1)
    groups = [("meets goal", [t for t in ts if t.meets and not t.resumed], "o", _PASS, True),
              ("below goal", [t for t in ts if not t.meets and not t.error and not t.resumed], "o", _BELOW, True),
              ("resumed (from an earlier run)", [t for t in ts if t.resumed and not t.error], "o",
               _PASS, False)]
    for label, group, marker, color, filled in groups:
        if group:
            ax.scatter([t.number for t in group], [t.accuracy for t in group], marker=marker, s=36, zorder=3,
                       label=label, facecolors=color if filled else "none", edgecolors=color if filled else "#333333")
    failed = [t for t in ts if t.error]
    if failed:
        ax.scatter([t.number for t in failed], [floor + pad * 0.3] * len(failed), marker="x", s=50, color=_FAIL,
                   zorder=3, label="failed (error)")
    best = run.best_trial
    if best is not None and _finite(best.accuracy):
        ax.scatter([best.number], [best.accuracy], marker="*", s=260, color=_BEST, edgecolors="black", zorder=4,
                   label=f"returned model (trial {best.number})")
    if _finite(run.baseline_accuracy):
        ax.axhline(run.baseline_accuracy, color="black", lw=1, ls=":", label="FP32 baseline")
    if _finite(run.threshold):
        ax.axhline(run.threshold, color=_FAIL, lw=1.2, ls="--", label=f"goal ({run.criterion})")
    ax.set_ylim(floor, hi + pad)
    previous = None
    for t in ts:  # the strategy's search phases, where it recorded them: a dotted line where each one starts
        if t.phase and t.phase != previous:
            ax.axvline(t.number - 0.5, color="#bbbbbb", lw=0.8, ls=":", zorder=0)
            ax.text(t.number - 0.45, hi + pad * 0.9, t.phase, fontsize=7, color="#666666", va="top")
        previous = t.phase or previous
    ax.set_xlabel("trial")
    ax.set_ylabel("accuracy")
    if xs:
        ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        if len(xs) <= 30:
            ax.set_xticks(xs)
    ax2 = ax.twinx()
    objs = [(t.number, t.objective) for t in ts if _finite(t.objective)]
    if objs:
        ax2.scatter([n for n, _ in objs], [v for _, v in objs], marker="s", s=22, color=_OBJ, alpha=0.8,
                    label=run.objective, zorder=2)
    if _finite(run.baseline_objective):
        ax2.axhline(run.baseline_objective, color=_OBJ, lw=0.8, ls=":", label=f"FP32 {run.objective}")
    ax2.set_ylabel(f"{run.objective}" + (f" ({run.objective_unit})" if run.objective_unit else ""), color=_OBJ)
    ax2.tick_params(axis="y", colors=_OBJ)
    top = max([v for _, v in objs] + [v for v in (run.baseline_objective,) if _finite(v)], default=1.0)
    ax2.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    ax.set_title("accuracy per trial (objective measured only for trials meeting the goal)", fontsize=10)
    return _png(fig)


def pareto_chart(run: RunData) -> bytes:
    """Accuracy against objective for every trial that has both, the Pareto front drawn through the best."""
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    pts = [(t.number, t.objective, t.accuracy) for t in run.trials if _finite(t.objective) and _finite(t.accuracy)]
    front = pareto_front(pts, run.higher_is_better, run.objective_higher_is_better)
    by_id = {p[0]: p for p in pts}
    others = [p for p in pts if p[0] not in front]
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], color=_BELOW, s=30, label="trial", zorder=2)
    if front:
        fx = [by_id[i][1] for i in front]
        fy = [by_id[i][2] for i in front]
        ax.plot(fx, fy, color=_PASS, lw=1.5, drawstyle="steps-post", zorder=1)
        ax.scatter(fx, fy, color=_PASS, s=40, label="Pareto front", zorder=3)
    labels: Dict[Tuple[float, float], List[int]] = {}
    for n, o, a in pts:  # trials at the same point share one label
        labels.setdefault((o, a), []).append(n)
    for (o, a), ns in labels.items():
        text = ",".join(map(str, ns)) if len(ns) <= 3 else f"{ns[0]},...,{ns[-1]} ({len(ns)})"
        ax.annotate(text, (o, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    best = run.best_trial
    if best is not None and best.number in by_id:
        ax.scatter([best.objective], [best.accuracy], marker="*", s=260, color=_BEST, edgecolors="black", zorder=4,
                   label=f"returned model (trial {best.number})")
    if _finite(run.baseline_objective) and _finite(run.baseline_accuracy):
        ax.scatter([run.baseline_objective], [run.baseline_accuracy], marker="D", s=50, color="black",
                   label="FP32 baseline", zorder=4)
    if _finite(run.threshold):
        ax.axhline(run.threshold, color=_FAIL, lw=1.2, ls="--", label="accuracy goal")
    better = "higher" if run.objective_higher_is_better else "lower"
    ax.set_xlabel(f"{run.objective}" + (f" ({run.objective_unit})" if run.objective_unit else "") +
                  f", {better} is better")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("accuracy against objective", fontsize=10)
    return _png(fig)


def ops_chart(values: Dict[str, float], title: str, column: str) -> bytes:
    """Horizontal bars, largest first, for one number per op."""
    items = list(values.items())[:_MAX_OPS]
    fig = _figure(7.5, 1.2 + 0.28 * len(items))
    ax = fig.add_subplot(1, 1, 1)
    names: List[str] = [op if len(op) <= 40 else "..." + op[-37:] for op, _ in items]
    ax.barh(range(len(items)), [v for _, v in items], color=_OBJ)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(column)
    more = f" (top {_MAX_OPS} of {len(values)})" if len(values) > _MAX_OPS else ""
    ax.set_title(title + more, fontsize=10)
    return _png(fig)


def draw_charts(run: RunData) -> Dict[str, bytes]:
    """Every chart the run has data for, as ``{name: png bytes}``; MissingPlotting without matplotlib."""
    charts = {"trials": trials_chart(run)} if run.trials else {}
    if any(_finite(t.objective) and _finite(t.accuracy) for t in run.trials):
        charts["pareto"] = pareto_chart(run)
    for key, values in run.op_data.items():
        title, column, _ = OP_INSIGHTS[key]
        charts[key] = ops_chart(values, title, column)
    return charts
