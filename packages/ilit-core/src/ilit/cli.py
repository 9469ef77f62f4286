"""The ``ilit`` command: look at a finished run and check configs without writing Python.

``ilit report``, ``ilit history``, ``ilit config check`` and ``ilit config template``. argparse only, and each
command imports what it needs when it runs, so ``import ilit`` stays light.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]

_EPILOG = """examples:
  ilit report ./ilit_workspace            write ./ilit_workspace/report/report.html and print its path
  ilit history ./ilit_workspace           print the trial table
  ilit config check conf.yaml             validate a config as Tuner(conf.yaml) does, without a model
  ilit config template > conf.yaml        start from the annotated template
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ilit`` and its subcommands."""
    from .version import __version__

    parser = argparse.ArgumentParser(prog="ilit", description="ilit: accuracy-driven INT8 quantization tuning. "
                                     "Look at a tuning run and check configs from the command line.",
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ilit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    rep = sub.add_parser("report", help="write a report (HTML with charts, or Markdown) of a tuning run",
                         description="Write a report of a tuning run: per-trial chart, accuracy against objective "
                         "with the Pareto front, per-op sensitivity, the trial table and the run's facts. HTML "
                         "with embedded charts needs matplotlib (pip install 'ilit-core[report]'); without it a "
                         "Markdown report is written. Prints the report's path.")
    rep.add_argument("path", help="an ilit workspace directory (tuning.workspace.path) or its history.json")
    rep.add_argument("-o", "--output", metavar="DIR", help="directory to write into (default: report/ beside "
                     "history.json)")
    rep.add_argument("--format", choices=("auto", "html", "md"), default="auto",
                     help="html (needs matplotlib), md (Markdown), or auto: html when matplotlib is installed "
                     "(default)")

    hist = sub.add_parser("history", help="print the trial table of a tuning run",
                          description="Print the summary table of a history.json, as Tuner.summary() does: the "
                          "FP32 baseline, then every trial; * marks the returned model.")
    hist.add_argument("path", help="an ilit workspace directory or its history.json")

    conf = sub.add_parser("config", help="check a YAML config, or print the annotated template",
                          description="Work with tuning configs.")
    conf_sub = conf.add_subparsers(dest="config_command", metavar="ACTION")
    conf_sub.required = True
    check = conf_sub.add_parser("check", help="validate a YAML config without a model",
                                description="Validate a YAML config exactly as ilit.Tuner(yaml) does (keys, "
                                "values, and that the named strategy, objective, metric and adaptor are "
                                "installed), without a model. Exit status 1 and the ConfigError if it is invalid.")
    check.add_argument("yaml", help="the YAML config file")
    conf_sub.add_parser("template", help="print the annotated config template",
                        description="Print the annotated YAML template, every key with its choices.")
    return parser


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.path, args.output, args.format))
    return 0


def _history(args: argparse.Namespace) -> int:
    from .report import load_run, summary_table

    print(summary_table(load_run(args.path)))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from .tuner import Tuner

    cfg = Tuner(args.yaml).config
    t = cfg.tuning
    metric = f"{t.metric[0]}" if t.metric is not None else "none (pass eval_func)"
    print(f"{args.yaml}: valid. framework {cfg.framework.name or 'detected from the model'}, strategy {t.strategy}, "
          f"objective {t.objective}, metric {metric}, {t.accuracy_criterion.describe()}, timeout {t.timeout:g}s, "
          f"max_trials {t.max_trials}")
    return 0


def _config_template(args: argparse.Namespace) -> int:
    from importlib.resources import files

    sys.stdout.write(files("ilit").joinpath("template.yaml").read_text(encoding="utf-8"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``ilit`` command; returns the exit status (0 ok, 1 the input was refused, 2 bad usage)."""
    from .errors import ConfigError
    from .report.data import ReportError

    args = build_parser().parse_args(argv)
    handler = {"report": _report, "history": _history}.get(args.command)
    if handler is None:
        handler = _config_check if args.config_command == "check" else _config_template
    try:
        return handler(args)
    except (ConfigError, ReportError, ImportError) as exc:
        print(f"ilit {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `ilit config template | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
