"""How a command fails: one line on stderr, never a traceback, never a control character."""

from __future__ import annotations

import sys

PROG = "pc-token-broker"


def fail(message: str, code: int) -> int:
    """One line on stderr: whitespace collapsed, control characters (a hostile answer's
    terminal escapes) shown as '?'."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    print(f"{PROG}: {line}", file=sys.stderr)
    return code
