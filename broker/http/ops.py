"""The operators' endpoints (`/healthz`, `/readyz`, `/metrics`) and the answers for paths and
methods that do not exist."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core.tokens.render import JSON, json_body
from broker.http.access import hidden, operator_guard, refuse
from broker.http.common import HEADERS, error_response
from broker.observe.metrics import CONTENT_TYPE


class OpsHandlers:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ok"}', headers=HEADERS[JSON])

    async def readyz(self, request: web.Request) -> web.Response:
        broker = self.broker
        runtime = broker.runtime
        denied = operator_guard(runtime, broker.metrics, request)
        if denied is not None:
            return denied
        ok, detail = broker.ready()
        secret = hidden(runtime, request)
        detail = {name: states for name, states in detail.items() if name not in secret}
        body = json_body({"ready": ok, "profiles": detail})
        return web.Response(status=200 if ok else 503, body=body, headers=HEADERS[JSON])

    async def metrics(self, request: web.Request) -> web.Response:
        broker = self.broker
        runtime = broker.runtime
        denied = operator_guard(runtime, broker.metrics, request)
        if denied is not None:
            return denied
        body = broker.metrics.render()
        secret = hidden(runtime, request)
        if secret:
            labels = tuple(f'profile="{name}"'.encode() for name in secret)
            body = b"\n".join(
                line for line in body.split(b"\n") if not any(label in line for label in labels)
            )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def not_found(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            return await self.method_not_allowed(request)
        return error_response(404, "not_found", "no such endpoint")

    async def method_not_allowed(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":  # a CORS preflight: browsers get nothing here
            return refuse(
                self.broker.metrics,
                "preflight",
                error_response(403, "preflight_refused", "cross-origin requests are not served"),
            )
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed here")
