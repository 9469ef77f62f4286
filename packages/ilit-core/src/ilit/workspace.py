"""The tuning workspace: its file layout, checked writable before any work, and written so that a kill at any
moment loses nothing.

``history.json`` is replaced atomically (written beside it as ``.history-*.tmp``, then renamed); the best model is
saved beside its final place and swapped in, so a crash mid-save leaves the previous best model, never a
half-written one. :class:`Workspace` is the one place that knows these names.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any, Callable, Union

from .errors import ConfigError
from .lock import WorkspaceLock

__all__ = ["Workspace", "prepare_workspace", "save_atomic", "HISTORY_FILE", "BEST_MODEL_DIR",
           "TMP_HISTORY_PREFIX", "TMP_HISTORY_SUFFIX"]

HISTORY_FILE = "history.json"
BEST_MODEL_DIR = "best_model"
#: a history being written: ``.history-<pid>-<random>.tmp`` beside the final file
TMP_HISTORY_PREFIX, TMP_HISTORY_SUFFIX = ".history-", ".tmp"
#: a model being saved (``.ilit-new-<name>-<pid>``) and the one it replaces, moved aside (``.ilit-old-...``)
_NEW, _OLD = ".ilit-new-", ".ilit-old-"


class Workspace:
    """A run's directory: where ``history.json`` and ``best_model/`` live, and how they are written safely."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.path.abspath(os.fspath(path))

    @property
    def history_path(self) -> str:
        return os.path.join(self.path, HISTORY_FILE)

    @property
    def best_model_dir(self) -> str:
        return os.path.join(self.path, BEST_MODEL_DIR)

    def lock(self) -> WorkspaceLock:
        """Create the directory and lock it for this run (:class:`ilit.WorkspaceBusyError` if another run holds it);
        use as ``with workspace.lock(): ...``."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise ConfigError("tuning.workspace.path", f"cannot write to {self.path!r} ({exc.strerror or exc}); "
                              "choose a directory you can write to") from None
        return WorkspaceLock(self.path).acquire()

    def prepare(self) -> None:
        """Create the directory, prove it writable and tidy what a killed run left (see :func:`prepare_workspace`)."""
        prepare_workspace(self.path)

    def save_best(self, save: Callable[[Any, str], None], model: Any) -> None:
        """Save ``model`` as the best model so far, swapped in whole."""
        save_atomic(save, model, self.best_model_dir)

    def has_best(self) -> bool:
        return os.path.exists(self.best_model_dir)


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
    for stale in glob.glob(os.path.join(path, f"{TMP_HISTORY_PREFIX}*{TMP_HISTORY_SUFFIX}")):
        if not _owner_alive(os.path.basename(stale)[len(TMP_HISTORY_PREFIX):].split("-", 1)[0]):
            _remove(stale)
    for old in glob.glob(os.path.join(path, f"{_OLD}*")):
        name, _, pid = os.path.basename(old)[len(_OLD):].rpartition("-")
        if _owner_alive(pid):  # another live process is mid-swap (without the lock): not ours to touch
            continue
        final = os.path.join(path, name)
        try:
            if not os.path.lexists(final):
                os.replace(old, final)  # the swap was interrupted after moving the old model aside
            else:
                _remove(old)
        except FileNotFoundError:  # gone meanwhile
            pass
    for new in glob.glob(os.path.join(path, f"{_NEW}*")):
        if not _owner_alive(new.rpartition("-")[2]):
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


def _owner_alive(pid_text: str) -> bool:
    """Whether the process whose pid a leftover's name carries still runs (this one included: another thread
    may be mid-write). Only leftovers of dead processes are tidied; a live process's files are its business.
    """
    try:
        pid = int(pid_text)
    except ValueError:
        return False  # no pid in the name: an old leftover
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def _remove(path: str) -> None:
    """Remove a file or directory tree; one that vanished meanwhile (another process tidied it) is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    except FileNotFoundError:
        pass
