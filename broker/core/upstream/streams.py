"""Bounded reads of HTTP bodies (aiohttp's `read(n)` may return less than n before the end),
and JSON parsing of untrusted input."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import StreamReader


def load_json(data: str | bytes, *, constants: bool = True) -> Any:
    """json.loads for untrusted input: nesting too deep for the parser (a few KB of "[[[...")
    is a ValueError like any other malformed JSON, not a RecursionError. `constants=False`:
    NaN and Infinity (not JSON, though Python reads them) are a ValueError too."""
    try:
        return json.loads(data) if constants else json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def read_limited(stream: StreamReader, limit: int) -> bytes:
    """The whole body, or the first `limit + 1` bytes when it is larger than `limit`."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
