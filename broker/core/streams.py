"""Bounded reads of HTTP bodies (aiohttp's `read(n)` may return less than n before the end)."""

from __future__ import annotations

from aiohttp import StreamReader


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
