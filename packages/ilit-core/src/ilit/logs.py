"""ilit's logger names: every ilit module and every plugin logs under the ``ilit`` logger.

The tuner shows the ``ilit`` logger's INFO lines on stderr unless the application configured logging
itself, so whatever an adaptor, strategy, metric or objective logs through :func:`get_logger` shows with them,
and ``logging.getLogger("ilit").setLevel(...)`` quiets all of ilit, plugins included, at once.
"""

from __future__ import annotations

import logging

__all__ = ["ROOT", "get_logger"]

#: the logger every ilit module and plugin logs under
ROOT = "ilit"


def get_logger(module: str) -> logging.Logger:
    """The logger for ``module`` (pass ``__name__``): ``ilit.*`` modules keep their name, a plugin's module
    goes under ``ilit.`` (``ilit_pytorch.adaptor`` logs as ``ilit.ilit_pytorch.adaptor``)."""
    if module == ROOT or module.startswith(ROOT + "."):
        return logging.getLogger(module)
    return logging.getLogger(f"{ROOT}.{module}")

