"""The HTTP app: routes of every endpoint family, assembled. Depends on the service and cache,
never the reverse. `create_app(settings, *, clock, session)` is the one way in; tests use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from broker.config.settings import Settings
from broker.core.clock import Clock, SystemClock
from broker.core.service import Broker
from broker.http.common import Handler, counted
from broker.http.mirror import MirrorHandler
from broker.http.msi import MsiHandler
from broker.http.v1 import V1Handlers
from broker.observe.audit import Audit
from broker.observe.logs import make_logger
from broker.observe.metrics import Metrics
from broker.observe.redact import Redactor

BROKER = web.AppKey("broker", Broker)


def add_routes(app: web.Application, broker: Broker) -> None:
    r = app.router
    handlers = V1Handlers(broker)

    def route(path: str, name: str, method: str, handler: Handler, limit_body: bool = True) -> None:
        kw = {"metrics": broker.metrics, "log": broker.log}
        r.add_route(method, path, counted(name, handler, limit_body=limit_body, **kw))
        r.add_route("*", path, counted(name, handlers.method_not_allowed, **kw))

    route("/v1/token", "token", "GET", handlers.token)
    route("/v1/token/{profile}", "token", "GET", handlers.token)
    route("/v1/token/{profile}/refresh", "refresh", "POST", handlers.refresh)
    route("/v1/profiles", "profiles", "GET", handlers.profiles)
    route("/v1/tenants/{profile}", "tenants", "GET", handlers.tenants.listing)
    route(
        "/v1/tenants/{profile}/{tenant}/invalidate",
        "invalidate",
        "POST",
        handlers.tenants.invalidate,
    )
    route("/healthz", "healthz", "GET", handlers.healthz)
    route("/readyz", "readyz", "GET", handlers.readyz)
    route("/metrics", "metrics", "GET", handlers.metrics)
    mirror = MirrorHandler(broker)
    msi = MsiHandler(broker)
    route("/msi/token", "msi", "GET", msi.token)
    route("/msi/tenants/{tenant}/token", "msi", "GET", msi.tenant_token)
    # The mirror answers an oversized body itself, in Partner Center's error shape.
    route("/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
    route("/v3/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
    r.add_route(
        "*",
        "/{tail:.*}",
        counted("other", handlers.not_found, metrics=broker.metrics, log=broker.log),
    )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    session: aiohttp.ClientSession | None = None,
    log: Any = None,
    metrics: Metrics | None = None,
    redactor: Redactor | None = None,
    rand: Callable[[], float] | None = None,
    audit_stream: TextIO | None = None,
) -> web.Application:
    redactor = redactor or Redactor()
    log = log or make_logger(
        fmt=settings.server.log_format, level=settings.server.log_level, redactor=redactor
    )
    kwargs: dict[str, Any] = {"rand": rand} if rand else {}
    audit = Audit(audit_stream or sys.stderr, enabled=settings.server.audit)
    broker = Broker(
        settings,
        clock=clock or SystemClock(),
        log=log,
        metrics=metrics or Metrics(),
        redactor=redactor,
        audit=audit,
        **kwargs,
    )
    app = web.Application(client_max_size=64 * 1024)
    app[BROKER] = broker
    add_routes(app, broker)

    async def lifecycle(_app: web.Application):
        await broker.start(session)
        yield
        await broker.close()

    app.cleanup_ctx.append(lifecycle)
    return app
