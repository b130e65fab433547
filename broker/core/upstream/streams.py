"""Bounded reads of HTTP bodies (aiohttp's `read(n)` may return less than n before the end),
and JSON parsing of untrusted input."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import StreamReader


def load_json(data: str | bytes) -> Any:
    """json.loads for untrusted input: nesting too deep for the parser (a few KB of "[[[...")
    is a ValueError like any other malformed JSON, not a RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


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
