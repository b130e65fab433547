"""A request's body as a handler reads it: at most a limit, and by the deadline its connection's
`Gate` (`broker.http.protocol`) set at its head's first byte."""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.core.upstream.streams import read_limited
from broker.http.common import BodyTimeout
from broker.http.protocol import Gate


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request's body (at most `limit + 1` bytes), by its deadline or BodyTimeout."""
    transport = request.transport
    gate = transport.get_protocol() if transport is not None else None
    if not isinstance(gate, Gate):
        return await read_limited(request.content, limit)
    at, seconds = gate.body_deadline()
    try:
        async with asyncio.timeout_at(at):
            return await read_limited(request.content, limit)
    except TimeoutError:
        raise BodyTimeout(f"the request did not arrive within {seconds:g} s") from None
