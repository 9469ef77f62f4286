"""One tuning run per workspace: an exclusive ``flock`` on ``<workspace>/.ilit.lock`` held for the whole run.

Two runs writing one ``history.json`` and ``best_model`` would overwrite each other's results, so the
second one fails at once with :class:`ilit.WorkspaceBusyError`, naming the holder (pid, host, start time,
command). The kernel drops a ``flock`` when its holder exits, however it exits (SIGKILL included), so a lock
left by a killed run never blocks the next one: the file stays, its stale contents are simply overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from types import TracebackType
from typing import Any, Dict, Optional, Type

from .errors import WorkspaceBusyError
from .text import printable

__all__ = ["WorkspaceLock", "LOCK_FILE"]

log = logging.getLogger(__name__)
LOCK_FILE = ".ilit.lock"
_MAX_INFO = 4096  # bytes of holder description read back


class WorkspaceLock:
    """An exclusive, non-blocking lock on a workspace directory; use as a context manager or acquire/release."""

    def __init__(self, workspace: str) -> None:
        self.workspace = os.path.abspath(workspace)
        self.path = os.path.join(self.workspace, LOCK_FILE)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WorkspaceLock":
        """Take the lock, or raise :class:`WorkspaceBusyError` at once if another run (process or thread) holds it."""
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no flock; say so once and run unlocked
            log.warning("ilit: this platform has no fcntl.flock; workspace %s is not locked against a second run",
                        printable(self.workspace))
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise WorkspaceBusyError(self.workspace, None, f"cannot open the lock file {self.path!r} "
                                     f"({exc.strerror or exc}); is {LOCK_FILE} a symlink or not yours?") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: someone holds it
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkspaceBusyError(self.workspace, holder) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_me()).encode(), 0)
        except OSError:  # the description is a courtesy; the flock is the lock
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (also done by the kernel if the process dies)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale holder left in the file
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> "WorkspaceLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()


def _me() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> Optional[Dict[str, Any]]:
    """What the holder wrote about itself (pid, host, start time, command), or None if unreadable."""
    try:
        info = json.loads(os.pread(fd, _MAX_INFO, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None
