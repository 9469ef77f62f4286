"""A one-line status while tuning runs: the trial against ``max_trials``/``timeout`` with the time left, and the
calibration or evaluation batch being run.

It is drawn on the terminal the ``ilit`` log lines go to (the handler :func:`status_handler` makes clears it before
each log line and redraws it after), and only there: nothing is drawn when that stream is not a terminal, when
the application configured logging itself (ilit then installs no handler), or when ``ILIT_PROGRESS=0``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

__all__ = ["Progress", "ProgressHandler", "enabled", "ENV"]

ENV = "ILIT_PROGRESS"
_OFF = ("0", "false", "no", "off")
_MIN_REDRAW_S = 0.1


def enabled(stream: Any) -> bool:
    """Whether a status line may be drawn on ``stream``: a terminal, and not turned off by ``ILIT_PROGRESS=0``."""
    if os.environ.get(ENV, "").strip().lower() in _OFF:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The status of one tuning run; every method is a no-op when the status line is off."""

    def __init__(self, stream: Optional[TextIO], max_trials: int, timeout: float,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream = stream
        self.active = stream is not None and enabled(stream)
        self.max_trials, self.timeout, self.clock = max_trials, timeout, clock
        self.start = clock()
        self.trial: Optional[int] = None
        self.done = 0  # trials finished in this session (resumed ones excluded: they take no time)
        self.trial_time = 0.0  # the seconds they took
        self.phase, self.count, self.total = "", 0, None  # type: str, int, Optional[int]
        self.shown = False
        self._last_draw = -1e9

    # ------------------------------------------------------------------ what the tuner reports
    def set_phase(self, phase: str, total: Optional[int] = None) -> None:
        self.phase, self.count, self.total = phase, 0, total
        self.draw(force=True)

    def start_trial(self, number: int) -> None:
        self.trial = number
        self.set_phase("quantize")

    def end_trial(self, seconds: float) -> None:
        self.done += 1
        self.trial_time += seconds
        self.phase, self.total = "", None

    def tick(self) -> None:
        self.count += 1
        self.draw()

    def batches(self, loader: Iterable[Any], phase: str, limit: Optional[int] = None) -> Iterable[Any]:
        """``loader`` with each batch counted under ``phase`` (itself when the status line is off)."""
        if not self.active:
            return loader
        return _Counted(loader, self, phase, limit)

    # ------------------------------------------------------------------ drawing
    def text(self) -> str:
        """The status line: trial n of max, phase and batches, elapsed and the most time left."""
        now = self.clock()
        elapsed = now - self.start
        parts = []
        if self.trial is None:
            parts.append("FP32 baseline")
        else:
            parts.append(f"trial {self.trial}/{self.max_trials}")
        if self.phase:
            batches = f" {min(self.count, self.total)}/{self.total}" if self.total else (
                f" {self.count}" if self.count else "")
            parts.append(f"{self.phase}{batches}")
        parts.append(f"{_clock(elapsed)} elapsed")
        left = self.time_left(elapsed)
        if left is not None:
            parts.append(f"at most {_clock(left)} left")
        return "[ilit] " + " | ".join(parts)

    def time_left(self, elapsed: float) -> Optional[float]:
        """An upper bound on the time left: the timeout's remainder, or the mean trial time x the trials left."""
        bounds = []
        if self.timeout > 0:
            bounds.append(max(0.0, self.timeout - elapsed))
        if self.done:
            current = self.trial if self.trial is not None else 0
            remaining = max(0, self.max_trials - current + (1 if self.phase else 0))
            bounds.append(self.trial_time / self.done * remaining)
        return min(bounds) if bounds else None

    def draw(self, force: bool = False) -> None:
        if not self.active:
            return
        now = self.clock()
        if not force and now - self._last_draw < _MIN_REDRAW_S:
            return
        self._last_draw = now
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self._write("\r\x1b[K" + self.text()[:width])
        self.shown = True

    def clear(self) -> None:
        """Erase the status line (before a log line is written over it)."""
        if self.active and self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def close(self) -> None:
        self.clear()
        self.active = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)  # type: ignore[union-attr]
            self.stream.flush()  # type: ignore[union-attr]
        except (OSError, ValueError):  # a closed or broken terminal never stops tuning
            self.active = False


class _Counted:
    """A re-iterable view of a loader that counts the batches drawn from it."""

    def __init__(self, loader: Iterable[Any], progress: Progress, phase: str, limit: Optional[int]) -> None:
        self.loader, self.progress, self.phase = loader, progress, phase
        try:
            total: Optional[int] = len(loader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        self.total = min(total, limit) if total is not None and limit else (limit or total)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        self.progress.set_phase(self.phase, self.total)
        for batch in self.loader:
            self.progress.tick()
            yield batch

    def __getattr__(self, name: str) -> Any:  # anything else an adaptor asks of its loader
        if name.startswith("__") or name in ("loader", "progress", "phase", "total"):
            raise AttributeError(name)  # not set yet (copy, unpickling): never recurse
        return getattr(self.loader, name)


class ProgressHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stream handler ilit installs for its log lines: it clears the status line before each record."""

    progress: Optional[Progress] = None

    def emit(self, record: logging.LogRecord) -> None:
        p = self.progress
        if p is not None and p.active:
            p.clear()
        super().emit(record)
        if p is not None and p.active and (p.phase or p.trial is None):
            p.draw(force=True)
