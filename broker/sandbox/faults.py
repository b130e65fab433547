"""Injected gates, latency and faults, applied before an endpoint does its real work."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from aiohttp import web

from broker.sandbox.state import Fault, SandboxState

HANG_DEFAULT = 3600.0  # s: "hang" means hang, until the client gives up


async def apply(
    state: SandboxState,
    endpoint: str,
    request: web.Request,
    error: Callable[[int, Fault], web.Response],
) -> web.StreamResponse | None:
    """A faulty answer for this call, or None to answer normally."""
    gate = state.gates.get(endpoint)
    if gate is not None:
        await gate.wait()
    if state.latency[endpoint]:
        await asyncio.sleep(state.latency[endpoint])
    fault = state.next_fault(endpoint)
    if fault is None:
        return None
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.mode == "status":
        response = error(fault.status, fault)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response
    if fault.mode == "html":
        return web.Response(
            status=200,
            content_type="text/html",
            text="<html><body><h1>Service Unavailable</h1></body></html>",
        )
    if fault.mode == "garbage":
        return web.Response(status=200, content_type="application/json", text='{"access_to')
    if fault.mode == "expired":
        token = state.mint({"aud": "sandbox"}, lifetime=-60)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": -60})
    if fault.mode == "no_expiry":
        return web.json_response(
            {"access_token": secrets.token_urlsafe(40), "token_type": "Bearer"}
        )
    if fault.mode == "too_long":
        token = state.mint({"aud": "sandbox"}, lifetime=48 * 3600)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 48 * 3600}
        )
    if fault.mode == "reset":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp drops the handler; nothing is written
    # hang
    await asyncio.sleep(fault.delay or HANG_DEFAULT)
    return error(504, fault)
