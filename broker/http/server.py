"""The server the daemon runs (and every test that starts a broker): aiohttp's `AppRunner` for
the application `create_app` builds, listening on the given sockets through the connection gate
of `broker.http.protocol`. aiohttp's request handler answers a malformed request with text that
quotes it (bearer tokens included): `JsonErrors` answers it in the broker's JSON, quoting
nothing; and it reports each answer sent to the connection's gate through the one hook aiohttp
has for that, its access logger (`Answered`).

    server = HttpServer(create_app(settings))
    await server.start(sockets)   # the broker starts (app start-up), then the sockets accept
    ...
    await server.close()          # stop accepting; in-flight requests finish (shutdown_timeout)

Everything here is aiohttp's public API: the runner, its `server` (the protocol factory of
aiohttp's request handlers), an `AbstractAccessLogger` and `loop.create_server` with the gate
as the protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from broker.core.service import Broker
from broker.http.app import BROKER
from broker.http.protocol import Gate, Gates

KEEPALIVE = 15.0  # s an idle keep-alive connection stays open
MAX_HEADERS = 100  # request headers; more is 431
BACKLOG = 128
# The logger aiohttp hands the access logger; `Answered` writes nothing to it.
_log = logging.getLogger("broker.http")


class HttpServer:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.broker: Broker = app[BROKER]
        # No access log: the audit line replaces it (and aiohttp's costs a third of a hit).
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.broker.settings.server.shutdown_timeout,
        )
        metrics = self.broker.metrics
        self.gates = Gates(
            settings=lambda: self.broker.runtime.settings.server,
            on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
        )
        self._listeners: list[asyncio.AbstractServer] = []
        self._started = self._closed = False

    async def start(self, sockets: Iterable[socket.socket]) -> None:
        """Start the application (the broker starts before the first connection is accepted),
        then accept on every socket."""
        await self.runner.setup()
        self._started = True
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._listeners.append(
                await loop.create_server(self._accept, sock=sock, backlog=BACKLOG)
            )

    def _accept(self) -> Gate:
        return Gate(self.gates, self._handler)

    def _handler(self) -> JsonErrors:
        """aiohttp's request handler for a new connection, with the limits in force now."""
        server = self.broker.runtime.settings.server
        line = max(8190, server.max_header_bytes)  # the gate holds the head to the budget
        return JsonErrors(
            self.runner.server,
            loop=asyncio.get_running_loop(),
            on_reject=self.gates.on_reject,
            keepalive_timeout=KEEPALIVE,
            max_line_size=line,
            max_field_size=line,
            max_headers=MAX_HEADERS,
            lingering_time=server.read_timeout,  # an unread body is drained no longer than a head
        )

    async def close(self) -> None:
        """Stop accepting; idle connections close, in-flight requests finish (at most
        shutdown_timeout); then the application (and the broker) stop."""
        if self._closed or not self._started:
            return
        self._closed = True
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        await self.runner.cleanup()
        for gate in list(self.gates.open):  # refused ones still lingering
            if gate.transport is not None:
                gate.transport.close()
        for listener in listeners:
            await listener.wait_closed()


class Answered(AbstractAccessLogger):
    """Not a log (the audit line is the broker's): aiohttp calls a connection's access logger
    once each answer is written, or found undeliverable (`RequestHandler.finish_response`),
    whoever answered it (a route, aiohttp itself, `handle_error`); that is when the gate (the
    protocol of the request's transport) must hear of it. A connection already lost has no
    transport, and its gate nothing left to hear."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        transport = request.transport
        if transport is not None:
            gate = transport.get_protocol()
            if isinstance(gate, Gate):
                gate.answered(request)


class JsonErrors(web.RequestHandler):
    """aiohttp's request handler, answering the errors it meets before any handler runs (a
    malformed request) in the broker's JSON shape, quoting nothing of the request; each answer
    sent is reported to the connection's gate (`Answered`)."""

    def __init__(self, manager: Any, *, on_reject: Callable[[str], None], **kwargs: Any):
        super().__init__(manager, access_log_class=Answered, access_log=_log, **kwargs)
        self.on_reject = on_reject

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already being sent")
        status, code, text = _classify(status, exc)
        self.on_reject(code)
        if status >= 500:
            self.logger.warning("request failed before a handler: %s", type(exc).__name__)
        response = web.Response(
            status=status,
            body=json.dumps({"error": {"code": code, "message": text}}).encode(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
        response.force_close()
        return response


def _classify(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for an error aiohttp hit before or around a handler."""
    if isinstance(exc, LineTooLong):
        return 431, "headers_too_large", "a request header line is too long"
    if isinstance(exc, BadHttpMessage) and "many headers" in str(exc):
        return 431, "headers_too_large", "too many request headers"
    if isinstance(exc, BadHttpMessage) or 400 <= status < 500:
        return 400 if status >= 500 else status, "bad_request", "malformed HTTP request"
    if status == 504:
        return 504, "timeout", "the request took too long"
    return 500, "internal_error", "internal error (logged)"
