"""The HTTP app: routes, guards, the error shape. Depends on the service and cache, never the
reverse. `create_app(settings, *, clock, session)` is the one way in; tests use it directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from .clock import Clock, SystemClock
from .config import Settings
from .errors import UpstreamError
from .guards import OriginGuard
from .logs import make_logger
from .metrics import CONTENT_TYPE, Metrics
from .mirror_http import MirrorHandler
from .redact import Redactor
from .render import JSON, TEXT, Negotiator, Rendered, json_body, render
from .service import Broker
from .sources import KINDS

BROKER = web.AppKey("broker", Broker)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FORCE_REFRESH_INTERVAL = 10.0  # s between forced refreshes of one profile: no upstream storms
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_CONTENT_TYPES = {
    JSON: "application/json",
    "application/xml": "application/xml; charset=utf-8",
    "text/xml": "text/xml; charset=utf-8",
    TEXT: "text/plain; charset=utf-8",
}
_HEADERS = {media: {"Content-Type": ct, **_NO_STORE} for media, ct in _CONTENT_TYPES.items()}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    upstream_status: int | None = None,
    correlation_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The one error shape: {"error": {code, message, upstream_status?, correlation_id?}}."""
    error: dict[str, Any] = {"code": code, "message": message}
    if upstream_status is not None:
        error["upstream_status"] = upstream_status
    if correlation_id is not None:
        error["correlation_id"] = correlation_id
    return web.Response(
        status=status,
        body=json_body({"error": error}),
        headers={"Content-Type": "application/json", **_NO_STORE, **(headers or {})},
    )


class Handlers:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._negotiate = Negotiator()
        self._rendered: dict[tuple[str, str], Rendered] = {}
        self._last_forced: dict[str, float] = {}
        self._guard = OriginGuard(broker.settings.server)

    @property
    def settings(self) -> Settings:
        return self.broker.settings

    # -- guards ----------------------------------------------------------------------------

    def guard(self, request: web.Request) -> web.Response | None:
        """Origin checks and the required header; None when the request may pass."""
        headers = request.headers
        rejection = self._guard.origin(headers) or self._guard.required_header(headers)
        if rejection is None:
            return None
        self.broker.metrics.rejected.labels(rejection.reason).inc()
        return error_response(rejection.status, rejection.code, rejection.message)

    # -- /v1 ---------------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        denied = self.guard(request)
        if denied is not None:
            return denied
        profile = request.match_info.get("profile", "default")
        kind = request.query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        media = self._negotiate(request.headers.get("Accept"))
        if media is None:
            return error_response(
                406,
                "not_acceptable",
                "offered: application/json, application/xml, text/xml, text/plain",
            )
        entry = self.broker.cache.entry(profile, kind)
        if entry is None:
            return error_response(404, "unknown_profile", f"no profile named {profile!r}")
        try:
            token, hit = await entry.get()
        except UpstreamError as e:
            return upstream_error_response(e)
        metrics = self.broker.metrics
        metrics.cache.labels(profile, kind, "hit" if hit else "miss").inc()
        rendered = self._rendered.get((profile, kind))
        if rendered is None or rendered.token is not token:
            rendered = self._rendered[(profile, kind)] = render(token, profile, kind)
        expires_in = int(token.expires_mono - self.broker.clock.monotonic())
        return web.Response(body=rendered.body(media, expires_in), headers=_HEADERS[media])

    async def refresh(self, request: web.Request) -> web.Response:
        denied = self.guard(request)
        if denied is not None:
            return denied
        profile = request.match_info["profile"]
        kind = request.query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        aad = self.broker.cache.entry(profile, "aad")
        target = self.broker.cache.entry(profile, kind)
        if aad is None or target is None:
            return error_response(404, "unknown_profile", f"no profile named {profile!r}")
        now = self.broker.clock.monotonic()
        wait = self._last_forced.get(profile, -1e9) + FORCE_REFRESH_INTERVAL - now
        if wait > 0:
            self.broker.metrics.rejected.labels("refresh_rate").inc()
            return error_response(
                429,
                "too_many_refreshes",
                f"profile {profile!r} was refreshed moments ago",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        self._last_forced[profile] = now
        try:
            await aad.refresh()  # a forced partner refresh starts from a fresh AAD token too
            if target is not aad:
                await target.refresh()
        except UpstreamError as e:
            return upstream_error_response(e)
        status = target.status()
        return web.json_response(
            {
                "profile": profile,
                "kind": kind,
                "refreshed": True,
                "expires_on": status.expires_on,
                "expires_in": status.expires_in,
            },
            headers=_NO_STORE,
        )

    async def profiles(self, request: web.Request) -> web.Response:
        denied = self.guard(request)
        if denied is not None:
            return denied
        return web.Response(
            body=json_body({"profiles": self.profile_table()}), headers=_HEADERS[JSON]
        )

    def profile_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for s in self.broker.statuses():
            p = self.settings.profiles.get(s.profile)
            row = table.setdefault(
                s.profile,
                {
                    "credential": p.credential if p else None,
                    "warm": p.warm if p else None,
                },
            )
            row[s.kind] = {
                "state": s.state,
                "expires_on": s.expires_on,
                "expires_in": s.expires_in,
                "next_attempt_in": s.next_attempt_in,
                "failures_in_row": s.failures,
                "waiters": s.waiters,
                "last_error": s.last_error,
                "upstream_calls": s.calls,
            }
        return table

    # -- operators ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ok"}', headers=_HEADERS[JSON])

    async def readyz(self, request: web.Request) -> web.Response:
        ok, detail = self.broker.ready()
        body = json_body({"ready": ok, "profiles": detail})
        return web.Response(status=200 if ok else 503, body=body, headers=_HEADERS[JSON])

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.broker.metrics.render(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def not_found(self, request: web.Request) -> web.Response:
        return error_response(404, "not_found", "no such endpoint")

    async def method_not_allowed(self, request: web.Request) -> web.Response:
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed here")


def upstream_error_response(e: UpstreamError) -> web.Response:
    headers = None
    if e.retry_after:
        headers = {"Retry-After": str(int(e.retry_after + 0.999))}
    return error_response(
        e.status,
        e.code,
        e.message,
        upstream_status=e.upstream_status,
        correlation_id=e.correlation_id,
        headers=headers,
    )


def _counted(route: str, handler: Handler, broker: Broker) -> Handler:
    """Count by route and status; turn any crash into a JSON 500 without a traceback."""
    count = broker.metrics.count_request
    log = broker.log

    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = error_response(e.status, "http_error", e.reason)
        except Exception:
            log.exception("handler_crashed", route=route)
            response = error_response(500, "internal_error", "internal error (logged)")
        count(route, response.status)
        return response

    return wrapper


def add_routes(app: web.Application, handlers: Handlers, broker: Broker) -> None:
    r = app.router

    def route(path: str, name: str, method: str, handler: Handler) -> None:
        r.add_route(method, path, _counted(name, handler, broker))
        r.add_route("*", path, _counted(name, handlers.method_not_allowed, broker))

    route("/v1/token", "token", "GET", handlers.token)
    route("/v1/token/{profile}", "token", "GET", handlers.token)
    route("/v1/token/{profile}/refresh", "refresh", "POST", handlers.refresh)
    route("/v1/profiles", "profiles", "GET", handlers.profiles)
    route("/healthz", "healthz", "GET", handlers.healthz)
    route("/readyz", "readyz", "GET", handlers.readyz)
    route("/metrics", "metrics", "GET", handlers.metrics)
    mirror = MirrorHandler(broker)
    route("/generatetoken", "mirror", "POST", mirror.handle)
    route("/v3/generatetoken", "mirror", "POST", mirror.handle)
    r.add_route("*", "/{tail:.*}", _counted("other", handlers.not_found, broker))


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    session: aiohttp.ClientSession | None = None,
    log: Any = None,
    metrics: Metrics | None = None,
    redactor: Redactor | None = None,
    rand: Callable[[], float] | None = None,
) -> web.Application:
    redactor = redactor or Redactor()
    log = log or make_logger(
        fmt=settings.server.log_format, level=settings.server.log_level, redactor=redactor
    )
    kwargs: dict[str, Any] = {"rand": rand} if rand else {}
    broker = Broker(
        settings,
        clock=clock or SystemClock(),
        log=log,
        metrics=metrics or Metrics(),
        redactor=redactor,
        **kwargs,
    )
    app = web.Application(client_max_size=64 * 1024)
    app[BROKER] = broker
    add_routes(app, Handlers(broker), broker)

    async def lifecycle(_app: web.Application):
        await broker.start(session)
        yield
        await broker.close()

    app.cleanup_ctx.append(lifecycle)
    return app
