"""The tuning workspace: checked writable before any work, and written so that a kill at any moment loses nothing.

``history.json`` is replaced atomically (see :mod:`ilit.history`); the best model is saved beside its
final place and swapped in, so a crash mid-save leaves the previous best model, never a half-written one.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["prepare_workspace", "save_atomic"]

_NEW, _OLD = ".ilit-new-", ".ilit-old-"


def prepare_workspace(path: str) -> None:
    """Create ``path`` and prove it writable, so a bad workspace fails at start rather than after the first trial.

    Also tidies what a killed run may have left: temporary history files, a half-saved model, and a best
    model that was moved aside for a swap that never finished (it is put back).
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ilit-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError("tuning.workspace.path", f"cannot write to {path!r} ({exc.strerror or exc}); "
                          "choose a directory you can write to") from None
    for stale in glob.glob(os.path.join(path, ".history-*.tmp")):
        _remove(stale)
    for old in glob.glob(os.path.join(path, f"{_OLD}*")):
        final = os.path.join(path, os.path.basename(old)[len(_OLD):].rsplit("-", 1)[0])
        if not os.path.exists(final):
            os.replace(old, final)  # the swap was interrupted after moving the old model aside
        else:
            _remove(old)
    for new in glob.glob(os.path.join(path, f"{_NEW}*")):
        _remove(new)


def save_atomic(save: Callable[[Any, str], None], model: Any, path: str) -> None:
    """``save(model, tmp)`` beside ``path``, then swap it in: ``path`` always holds a complete model."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f"{_NEW}{name}-{os.getpid()}")
    old = os.path.join(parent, f"{_OLD}{name}-{os.getpid()}")
    _remove(tmp)
    try:
        save(model, tmp)
    except BaseException:
        _remove(tmp)
        raise
    if os.path.lexists(path):
        _remove(old)
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
