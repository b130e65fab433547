"""Line numbers for TOML key paths, for error messages. `tomllib` keeps no positions.

A line scan good enough for configuration files: table headers (`[a.b]`, `[a."b c"]`) and
`key = ...` / `a.b = ...` lines. Keys it cannot place are reported without a line.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_PART = re.compile(r"[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'")


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


def _place(lines: dict[tuple[str, ...], int], path: tuple[str, ...], number: int) -> None:
    """The path and each table it implies (`[profile.default]` writes the table `profile`
    too: a typo in its name is reported on this line)."""
    for n in range(1, len(path) + 1):
        lines.setdefault(path[:n], number)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (tables and keys) to the 1-based line where it is written."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        # Skip the inside of multi-line strings so a '=' in them is not taken for a key.
        if in_multiline:
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = False
            continue
        header = _HEADER.match(line)
        if header:
            table = _split(header.group(1))
            _place(lines, table, number)
            continue
        key = _KEY.match(line)
        if key:
            _place(lines, table + _split(key.group(1)), number)
            rest = line[key.end() :]
            if rest.count('"""') % 2 == 1 or rest.count("'''") % 2 == 1:
                in_multiline = True
    return lines
