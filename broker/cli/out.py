"""How a command fails: one line on stderr, never a traceback, never a control character."""

from __future__ import annotations

import sys

PROG = "pc-token-broker"


def shown(value: object, limit: int) -> str:
    """Text from elsewhere (an upstream, a daemon) as it may reach a terminal: at most `limit`
    characters, each control character (a terminal escape, a newline) shown as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def fail(message: str, code: int) -> int:
    """One line on stderr: whitespace collapsed, control characters (a hostile answer's
    terminal escapes) shown as '?'."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    print(f"{PROG}: {line}", file=sys.stderr)
    return code
