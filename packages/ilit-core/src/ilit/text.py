"""Text from models and files made safe to log: control characters escaped, so a name cannot forge log lines."""

from __future__ import annotations

from typing import Any

__all__ = ["printable"]


def printable(text: Any, limit: int = 0) -> str:
    """``str(text)`` with newlines, ANSI escapes and other non-printable characters written as escapes
    (``\\n``, ``\\x1b``); cut to ``limit`` characters (with ``...``) when ``limit`` > 0."""
    s = str(text)
    if not s.isprintable():
        s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    if limit > 0 and len(s) > limit:
        s = s[:limit] + "..."
    return s
