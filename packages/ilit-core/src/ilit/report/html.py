"""The self-contained HTML report: inline CSS, charts embedded as base64 PNGs, no script, no external URL."""

from __future__ import annotations

import base64
import json
import math
from html import escape
from typing import Dict, Sequence

import yaml

from .data import OP_INSIGHTS, RunData
from .text import _no_op_data, facts, op_rows, trial_header, trial_rows

__all__ = ["html_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#fff4cc;font-weight:600}tr.failed td{color:#b00020}tr.resumed td{font-style:italic}
tr.meets td:nth-child(2){color:#1b7a36}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
.note{color:#555;font-size:.9em}
"""


_NUM = ' class="num"'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], row_attrs: Sequence[str] = (),
           num_cols: Sequence[int] = ()) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        attrs = row_attrs[i] if i < len(row_attrs) else ""
        cells = "".join(f"<td{_NUM if j in num_cols else ''}>{escape(str(c))}</td>" for j, c in enumerate(r))
        out.append(f"<tr{attrs}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _attr(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def html_report(run: RunData, charts: Dict[str, bytes]) -> str:
    """The whole report as one HTML document; ``charts`` are embedded, so the file stands alone."""
    body = ["<h1>ilit tuning report</h1>"]
    body.append(_table(["", ""], [[k, v] for k, v in facts(run)]))
    body += ["<h2>Time per phase</h2>", _table(["phase", "seconds"], [[p, f"{s:.2f}"] for p, s in run.phases],
                                               num_cols=(1,))]
    body.append("<h2>Trials</h2>")
    if "trials" in charts:
        body.append(_img(charts["trials"], "accuracy and objective per trial"))
    body.append("<h2>Accuracy against objective</h2>")
    if "pareto" in charts:
        body.append(_img(charts["pareto"], "accuracy against objective with the Pareto front"))
        body.append(f'<p class="note">The objective is measured only for trials that meet the accuracy goal, so '
                    f'only those ({sum(1 for t in run.trials if not math.isnan(t.objective))} of '
                    f'{len(run.trials)}) are plotted.</p>')
    else:
        body.append('<p class="note">No trial has both an accuracy and an objective value (the objective is '
                    'measured only for trials meeting the goal).</p>')
    for key, values in run.op_data.items():
        title, column, meaning = OP_INSIGHTS[key]
        body += [f"<h2>{escape(title)}</h2>", f'<p class="note">{escape(meaning)}.</p>']
        if key in charts:
            body.append(_img(charts[key], title))
        body.append(f"<details><summary>all {len(values)} ops</summary>"
                    + _table(["rank", "op", column], op_rows(values), num_cols=(0, 2)) + "</details>")
    if not run.op_data:
        body += ["<h2>Per-op sensitivity</h2>", f'<p class="note">{escape(_no_op_data(run))}</p>']
    body.append("<h2>Trial table</h2>")
    attrs = []
    for t in run.trials:
        cls = " ".join(c for c, on in (("best", t.best), ("failed", bool(t.error)), ("resumed", t.resumed),
                                       ("meets", t.meets)) if on)
        attrs.append(f' id="trial-{t.number}" class="{cls}" data-accuracy="{_attr(t.accuracy)}" '
                     f'data-objective="{_attr(t.objective)}"')
    baseline = [["FP32", f"{run.baseline_accuracy:.4f}", "", run.format_objective(run.baseline_objective)]]
    body.append(_table(["", "accuracy", "", run.objective], baseline))
    body.append(_table(trial_header(run), trial_rows(run), attrs, num_cols=(1, 2, 3)))
    if run.other_insights:
        body += ["<h2>Other strategy insights</h2>",
                 f"<pre>{escape(json.dumps(run.other_insights, indent=1, default=str)[:20000])}</pre>"]
    body += ["<h2>Config</h2>", f"<pre>{escape(yaml.safe_dump(run.raw.get('config', {}), sort_keys=False))}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>ilit tuning report</title>\n<style>" + _CSS + "</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
