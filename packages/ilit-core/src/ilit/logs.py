"""ilit's logger names: every ilit module and every plugin logs under the ``ilit`` logger.

The tuner shows the ``ilit`` logger's INFO lines on stderr unless the application configured logging
itself, so whatever an adaptor, strategy, metric or objective logs through :func:`get_logger` shows with them,
and ``logging.getLogger("ilit").setLevel(...)`` quiets all of ilit, plugins included, at once.
"""

from __future__ import annotations

import logging

__all__ = ["ROOT", "get_logger", "ensure_log_output"]

#: the logger every ilit module and plugin logs under
ROOT = "ilit"


def get_logger(module: str) -> logging.Logger:
    """The logger for ``module`` (pass ``__name__``): ``ilit.*`` modules keep their name, a plugin's module
    goes under ``ilit.`` (``ilit_pytorch.adaptor`` logs as ``ilit.ilit_pytorch.adaptor``)."""
    if module == ROOT or module.startswith(ROOT + "."):
        return logging.getLogger(module)
    return logging.getLogger(f"{ROOT}.{module}")



def ensure_log_output() -> None:
    """Show the ``ilit`` logger's INFO lines (the per-trial lines) on stderr, unless the app configured logging.

    ilit's own handler does not propagate: a root handler added later (TensorFlow's absl does) would print
    every line twice.
    """
    log = logging.getLogger(ROOT)
    if not log.hasHandlers():
        from .progress import ProgressHandler  # a StreamHandler that keeps the status line off the log lines

        handler = ProgressHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [ilit] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
