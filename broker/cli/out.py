"""How a command fails: one line on stderr, never a traceback, never a control character."""

from __future__ import annotations

import math
import sys

PROG = "pc-token-broker"


def shown(value: object, limit: int) -> str:
    """Text from elsewhere (an upstream, a daemon) as it may reach a terminal: at most `limit`
    characters, each control character (a terminal escape, a newline) shown as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def shown_lines(text: str, limit: int = 1000) -> str:
    """`shown` for each line of a text built from a daemon's answer (a table, a report)."""
    return "\n".join(shown(line, limit) for line in text.split("\n"))


def number(value: object) -> float | None:
    """A finite number from a JSON answer (not a bool, not beyond a float), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def fail(message: str, code: int) -> int:
    """One line on stderr: whitespace collapsed, control characters (a hostile answer's
    terminal escapes) shown as '?'."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    print(f"{PROG}: {line}", file=sys.stderr)
    return code
