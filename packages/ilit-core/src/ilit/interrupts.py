"""Ctrl-C reaches the tuner even when library code swallows it.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives, possibly inside a
library's lazy import or a broad ``except`` that turns it into another error (torch's lazy imports of sympy
or ``torch._dynamo`` left half-initialised modules whose ``AttributeError`` then ended a run). While a run
watches, every SIGINT is also remembered, and the run's own ``except Exception`` handlers call
:func:`raise_if_interrupted` so that such an error becomes the ``KeyboardInterrupt`` it started as: the
tuner then saves the history and stops.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

__all__ = ["watch_interrupts", "raise_if_interrupted", "interrupted"]

_state = {"seen": False, "watching": 0}


def _handler(signum: int, frame: Any) -> None:
    _state["seen"] = True
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as without the watch


@contextmanager
def watch_interrupts() -> Iterator[None]:
    """Remember SIGINTs for the block (main thread only, and only over Python's default handler: an application
    that installed its own keeps it)."""
    if threading.current_thread() is not threading.main_thread() or _state["watching"]:
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    _state["seen"], _state["watching"] = False, 1
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state["seen"], _state["watching"] = False, 0


def interrupted() -> bool:
    """Whether a SIGINT arrived since the watch began."""
    return bool(_state["seen"])


def raise_if_interrupted(exc: Optional[BaseException] = None) -> None:
    """Raise ``KeyboardInterrupt`` (chained to ``exc``) if a SIGINT arrived during the watch; call it first in an
    ``except Exception`` handler, so an error that a swallowed Ctrl-C caused is not taken for a failed step."""
    if _state["seen"]:
        raise KeyboardInterrupt("interrupted (Ctrl-C)") from exc
