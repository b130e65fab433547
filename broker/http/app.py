"""The HTTP surface assembled: the broker and the aiohttp application that serves it. Depends on
the broker, never the reverse.

`create_app` builds the one application there is: aiohttp's router with the broker's routes
(`broker.http.routes`), no middleware, and the broker's start and close in the app's lifecycle. The
daemon serves it with `broker.http.server.HttpServer`, and so do the tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from broker.config.settings import Settings
from broker.core.service import Broker
from broker.core.tokens.clock import Clock, SystemClock
from broker.http.common import MAX_BODY
from broker.http.routes import add_routes
from broker.observe.audit import Audit
from broker.observe.logs import make_logger
from broker.observe.metrics import Metrics
from broker.observe.redact import Redactor

BROKER = web.AppKey("broker", Broker)


def create_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    log: Any = None,
    metrics: Metrics | None = None,
    redactor: Redactor | None = None,
    rand: Callable[[], float] | None = None,
    audit_stream: TextIO | None = None,
) -> Broker:
    redactor = redactor or Redactor()
    log = log or make_logger(
        fmt=settings.server.log_format, level=settings.server.log_level, redactor=redactor
    )
    kwargs: dict[str, Any] = {"rand": rand} if rand else {}
    stream = audit_stream or sys.stderr
    console = None
    if settings.server.log_format == "console":  # audit lines in the log's format, in order
        console = make_logger(fmt="console", level="info", stream=stream, redactor=redactor)
    audit = Audit(stream, enabled=settings.server.audit, console=console)
    return Broker(
        settings,
        clock=clock or SystemClock(),
        log=log,
        metrics=metrics or Metrics(),
        redactor=redactor,
        audit=audit,
        **kwargs,
    )


def create_app(
    settings: Settings,
    *,
    session: aiohttp.ClientSession | None = None,
    **kwargs: Any,
) -> web.Application:
    """The application the daemon serves; `kwargs` go to `create_broker`. The broker starts
    with the application (before the first connection) and closes after the last request."""
    broker = create_broker(settings, **kwargs)
    app = web.Application(client_max_size=MAX_BODY)
    app[BROKER] = broker
    add_routes(app, broker)

    async def lifecycle(_app: web.Application):
        await broker.start(session)
        yield
        await broker.close()

    app.cleanup_ctx.append(lifecycle)
    return app
