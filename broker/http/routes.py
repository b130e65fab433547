"""The broker's routes as one dispatch table: a dict lookup by path, then by method.

The routes are fixed, so aiohttp's router, match-info objects and middleware machinery buy
nothing here; `Routes.dispatch` is the request handler of aiohttp's low-level `web.Server` in
the daemon (see `broker.http.app.create_server`), and the one catch-all handler of the
`web.Application` that tests build with `create_app`, so both run the same code.

Paths match as aiohttp's router matched them: exactly, on the decoded path with an encoded "/"
kept inside its segment; a `{name}` is one non-empty segment, stored in the request's
`PARAMS`. A known path with another method is 405, anything else 404, both in the JSON error
shape. `Expect: 100-continue` is answered as aiohttp answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http import HttpVersion11

from broker.core.service import Broker
from broker.http.common import PARAMS, Handler, Reply, counted, error_response
from broker.http.mirror import MirrorHandler
from broker.http.msi import MsiHandler
from broker.http.ops import OpsHandlers
from broker.http.tenants import TenantHandlers
from broker.http.v1 import V1Handlers


@dataclass(frozen=True, slots=True)
class Route:
    methods: dict[str, Handler]  # method -> counted handler
    other: Handler  # any other method: 405
    template: tuple[str, ...] = ()  # path segments; "{name}" marks a parameter


class Routes:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        v1 = V1Handlers(broker)
        ops = OpsHandlers(broker)
        tenants = TenantHandlers(broker)
        mirror = MirrorHandler(broker)
        msi = MsiHandler(broker)
        self._ops = ops
        self._kw = {"metrics": broker.metrics, "log": broker.log}
        self._exact: dict[str, Route] = {}
        # Templates by (segment count, first two segments): one dict lookup, then a compare.
        self._templates: dict[tuple[int, str, str], list[Route]] = {}
        add = self._add
        add("/v1/token", "token", "GET", v1.token)
        add("/v1/token/{profile}", "token", "GET", v1.token)
        add("/v1/token/{profile}/refresh", "refresh", "POST", v1.refresh)
        add("/v1/profiles", "profiles", "GET", v1.profiles)
        add("/v1/tenants/{profile}", "tenants", "GET", tenants.listing)
        add("/v1/tenants/{profile}/{tenant}/invalidate", "invalidate", "POST", tenants.invalidate)
        add("/healthz", "healthz", "GET", ops.healthz)
        add("/readyz", "readyz", "GET", ops.readyz)
        add("/metrics", "metrics", "GET", ops.metrics)
        add("/msi/token", "msi", "GET", msi.token)
        add("/msi/tenants/{tenant}/token", "msi", "GET", msi.tenant_token)
        # The mirror answers an oversized body itself, in Partner Center's error shape.
        add("/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
        add("/v3/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
        self._not_found = counted("other", ops.not_found, **self._kw)

    def _add(self, path: str, name: str, method: str, handler: Handler, **kw: bool) -> None:
        segments = tuple(path.split("/"))
        route = Route(
            methods={method: counted(name, handler, **kw, **self._kw)},
            other=counted(name, self._ops.method_not_allowed, **self._kw),
            template=segments,
        )
        if "{" not in path:
            self._exact[path] = route
            return
        assert not segments[1].startswith("{") and not segments[2].startswith("{")
        self._templates.setdefault((len(segments), segments[1], segments[2]), []).append(route)

    def _match(self, request: web.BaseRequest) -> Route | None:
        path = request.rel_url.path_safe  # decoded, but an encoded "/" stays within its segment
        route = self._exact.get(path)
        if route is not None:
            return route
        segments = path.split("/")
        if len(segments) < 3:
            return None
        for route in self._templates.get((len(segments), segments[1], segments[2]), ()):
            params = _bind(route.template, segments)
            if params is not None:
                request[PARAMS] = params
                return route
        return None

    def dispatch(self, request: web.BaseRequest) -> Awaitable[Reply]:
        """The request handler. Not a coroutine itself: it returns the handler's, so a cache hit
        runs one coroutine frame fewer."""
        route = self._match(request)
        if route is None:
            handler = self._not_found
        else:
            handler = route.methods.get(request.method) or route.other
        if request.method == "POST" and "Expect" in request.headers:
            return self._expect(request, handler)
        return handler(request)

    async def _expect(self, request: web.BaseRequest, handler: Handler) -> Reply:
        expect = request.headers["Expect"]
        if request.version == HttpVersion11:
            if expect.lower() != "100-continue":
                return error_response(417, "expectation_failed", "only 100-continue is supported")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's own bytes start after the interim one
        return await handler(request)


def _bind(template: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    """The template's parameters from a path of the same length, or None if it differs."""
    params: dict[str, str] = {}
    for want, got in zip(template, segments, strict=True):
        if want.startswith("{"):
            if not got:
                return None
            if "%" in got:  # what path_safe kept encoded
                got = got.replace("%2F", "/").replace("%25", "%")
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params
