"""The HTTP surface assembled: the broker service and its routes. Depends on the service and
cache, never the reverse.

`create_server` is what the daemon serves: aiohttp's low-level `web.Server` with the dispatch
table of `broker.http.routes` as its handler (no Application, router or middleware machinery on
the request path). `create_app` wraps the same dispatch table in a `web.Application` with one
catch-all route, for tests and embedding; both answer every request identically.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from broker.config.settings import Settings
from broker.core.clock import Clock, SystemClock
from broker.core.service import Broker
from broker.http.common import MAX_BODY
from broker.http.routes import Routes
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


def create_server(broker: Broker, **kwargs: Any) -> web.Server:
    """The low-level server the daemon runs; `kwargs` go to aiohttp's request handler
    (timeouts, line limits). The broker is started and closed by the runner."""
    loop = asyncio.get_running_loop()
    # Bodies that `read()`/`json()` refuse past MAX_BODY, as the Application's did. (A partial,
    # not a function: no Python frame per request.)
    small_request = functools.partial(web.BaseRequest, loop=loop, client_max_size=MAX_BODY)
    return web.Server(Routes(broker).dispatch, request_factory=small_request, loop=loop, **kwargs)


def create_app(
    settings: Settings,
    *,
    session: aiohttp.ClientSession | None = None,
    **kwargs: Any,
) -> web.Application:
    """The same routes as a `web.Application` (tests use it with aiohttp's TestServer)."""
    broker = create_broker(settings, **kwargs)
    app = web.Application(client_max_size=MAX_BODY)
    app[BROKER] = broker
    dispatch = Routes(broker).dispatch

    async def handle(request: web.Request) -> Any:
        return await dispatch(request)

    app.router.add_route("*", "/{tail:.*}", handle)

    async def lifecycle(_app: web.Application):
        await broker.start(session)
        yield
        await broker.close()

    app.cleanup_ctx.append(lifecycle)
    return app
