"""``ilit report``: a readable report of a tuning run from its ``history.json``.

HTML with charts needs matplotlib (``pip install 'ilit-core[report]'``); without it a Markdown report
with the same tables is written. Importing this package does not import matplotlib.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from .data import ReportError, RunData, load_run, pareto_front, run_from_dict
from .text import summary_table

__all__ = ["FORMATS", "ReportError", "RunData", "load_run", "pareto_front", "run_from_dict", "summary_table",
           "write_report"]

log = logging.getLogger(__name__)
FORMATS = ("auto", "html", "md")


def plotting_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_report(source: Union[str, "os.PathLike[str]"], out_dir: Optional[str] = None, fmt: str = "auto") -> str:
    """Write the report of the run in ``source`` (a workspace or a history.json) and return its path.

    ``out_dir`` defaults to ``report/`` beside the history file. ``fmt``: ``html`` (charts; needs matplotlib),
    ``md`` (Markdown, with the charts as PNG files when matplotlib is there), or ``auto`` (html if it can).
    """
    if fmt not in FORMATS:
        raise ValueError(f"report format {fmt!r} is not one of {', '.join(FORMATS)}")
    from .charts import INSTALL_HINT, MissingPlotting, draw_charts

    run = load_run(source)
    if fmt == "auto":
        fmt = "html" if plotting_available() else "md"
        if fmt == "md":
            log.warning("matplotlib is not installed, so the report is Markdown without charts; for the HTML "
                        "report with charts: %s", INSTALL_HINT)
    elif fmt == "html" and not plotting_available():
        raise MissingPlotting(f"the HTML report's charts need matplotlib: {INSTALL_HINT} "
                              "(or ask for the Markdown report, which needs nothing more)")
    out_dir = os.path.abspath(out_dir or os.path.join(os.path.dirname(os.path.abspath(run.path)), "report"))
    os.makedirs(out_dir, exist_ok=True)
    charts = draw_charts(run) if plotting_available() else {}
    images = {}
    for name, png in charts.items():
        file = f"{name}.png"
        with open(os.path.join(out_dir, file), "wb") as f:
            f.write(png)
        images[name] = file
    if fmt == "html":
        from .html import html_report

        path, text = os.path.join(out_dir, "report.html"), html_report(run, charts)
    else:
        from .text import markdown_report

        path, text = os.path.join(out_dir, "report.md"), markdown_report(run, images)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
