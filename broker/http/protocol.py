"""Connection-level limits aiohttp does not have: a deadline for reading a request's head (a
slowloris defence: aiohttp waits for headers forever), a budget for its size, a cap on open
connections, and JSON error answers that never echo the request back.

`GuardedServerRunner` is aiohttp's low-level ServerRunner with its protocol factory wrapped so
that every connection gets a `GuardedRequestHandler`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from broker.http.callers import Caller, caller_of
from broker.http.common import BodyTimeout

LINGER = 1.0  # s a refused connection stays half-open so its answer is read, not reset


@dataclass
class Limits:
    read_timeout: float  # s to receive a request's whole head
    max_connections: int
    max_head_bytes: int  # request line and headers together
    on_reject: Callable[[str], None]  # counts a refusal in metrics, by reason
    open: int = 0


def raw_error(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer for when no request object exists (yet)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    phrase = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _classify(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for an error aiohttp hit before or around a handler. The
    message never quotes the request: aiohttp's own would echo it, bearer tokens included."""
    if isinstance(exc, LineTooLong):
        return 431, "headers_too_large", "a request header line is too long"
    if isinstance(exc, BadHttpMessage) and "many headers" in str(exc):
        return 431, "headers_too_large", "too many request headers"
    if isinstance(exc, BadHttpMessage) or 400 <= status < 500:
        return 400 if status >= 500 else status, "bad_request", "malformed HTTP request"
    if status == 504:
        return 504, "timeout", "the request took too long"
    return 500, "internal_error", "internal error (logged)"


class GuardedRequestHandler(RequestHandler):
    __slots__ = (
        "_body",
        "_body_timer",
        "_counted",
        "_head_bytes",
        "_head_line_done",
        "_head_started",
        "_head_timer",
        "_in_head",
        "_limits",
        "_line_bytes",
        "_peer",
        "_tail",
    )

    def __init__(self, manager: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._counted = False
        self._in_head = True  # the bytes arriving now belong to a request's head
        self._head_bytes = 0  # of the head being read: never body bytes
        self._head_line_done = False
        self._line_bytes = 0  # bytes of the request line seen so far
        self._head_started = 0.0  # loop time the head's first byte arrived
        self._tail = b""  # the head's last bytes, to find its end across packets
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the body being received (a StreamReader), if any
        self._body_timer: asyncio.TimerHandle | None = None
        self._peer: Caller | None = None

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._limits.open += 1
        self._counted = True
        if self._limits.open > self._limits.max_connections:
            self._reject(429, "too_many_connections", "the broker is at its connection limit")
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            # Who connected, as the kernel recorded it at connect(): decided now, once.
            self._peer = caller_of(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._limits.open -= 1
            self._counted = False
        self._disarm()
        self._end_body()
        super().connection_lost(exc)

    def caller(self) -> Caller:
        """Who is on the other end, worked out once per connection (not once per request):
        a unix-socket peer when it connected, a TCP peer (an address) at its first request."""
        if self._peer is None:
            self._peer = caller_of(self.transport)
        return self._peer

    # -- reading a request: its head, then its body -----------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        counting = self._in_head
        if counting and data:
            # The usual request: its whole head in this one packet, well within budget. (The
            # general path, `_count_head`, finds the same end; this one copies nothing.)
            end = data.find(b"\n\r\n") if not self._head_bytes and not self._tail else -1
            if 0 <= end <= self._limits.max_head_bytes - 3 and data.find(b"\n\n", 0, end + 1) < 0:
                self._head_started = self._loop.time()
                self._head_bytes = end + 3
                self._in_head = False
            elif self._count_head(data):
                return  # refused: too large
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # a whole head arrived: its deadline is met
            self._disarm()
            self._head_bytes = self._line_bytes = 0
            self._head_line_done = False
            self._tail = b""
            payload = self._messages[-1][1]
            if payload.is_eof():
                self._in_head = True
            else:
                # The body must be complete by the same deadline as the head: read_timeout
                # from the head's first byte. (A timer only for requests with a body.)
                self._end_body()
                self._in_head = False
                self._body = payload
                started = self._head_started if counting else self._loop.time()
                self._body_timer = self._loop.call_at(
                    started + self._limits.read_timeout, self._body_too_slow
                )
        elif self._body is not None:
            if self._body.is_eof():
                self._end_body()
                self._in_head = True
        elif counting and self._head_timer is None and not (self._force_close or self._close):
            # A head split over packets must be complete within read_timeout. (Arming only
            # here keeps a timer off the path of the usual one-packet request.)
            self._arm()

    def _count_head(self, data: bytes) -> bool:
        """Count the bytes of `data` that belong to the head (up to its blank line, never the
        body that follows it); refuse the request when over budget. True when refused."""
        if not self._head_bytes:
            self._head_started = self._loop.time()
        seen = self._tail + data
        ends = [i + len(m) for m in (b"\n\r\n", b"\n\n") if (i := seen.find(m)) >= 0]
        head = min(ends) - len(self._tail) if ends else len(data)
        self._head_bytes += head
        if not self._head_line_done:
            end = data.find(b"\n", 0, head)
            self._line_bytes += head if end < 0 else end
            self._head_line_done = end >= 0
        if self._head_bytes > self._limits.max_head_bytes:
            if self._line_bytes > self._limits.max_head_bytes or not self._head_line_done:
                self._reject(414, "uri_too_long", "the request line is too long")
            else:
                self._reject(
                    431,
                    "headers_too_large",
                    f"request headers over {self._limits.max_head_bytes} bytes",
                )
            return True
        if ends:
            self._in_head = False  # what follows is body (or the next, pipelined, request)
        else:
            self._tail = seen[-2:]
        return False

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self._loop.call_later(self._limits.read_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _end_body(self) -> None:
        self._body = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._current_request is None and not self._messages and self._head_bytes:
            self._reject(
                408,
                "request_timeout",
                f"the request head did not arrive within {self._limits.read_timeout:g} s",
            )
        elif self._current_request is None and not self._messages:
            self.force_close()  # connected and said nothing: just close

    def _body_too_slow(self) -> None:
        """The deadline passed with the body incomplete: whoever reads it (the handler, or
        aiohttp draining it) gets BodyTimeout; the handler answers 408 and the connection
        closes."""
        self._body_timer = None
        body, self._body = self._body, None
        if body is not None and not body.is_eof():
            self._limits.on_reject("request_timeout")
            body.set_exception(
                BodyTimeout(f"the request did not arrive within {self._limits.read_timeout:g} s")
            )

    def _reject(self, status: int, code: str, message: str) -> None:
        self._limits.on_reject(code)
        self._disarm()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # A lingering close: send the answer, stop reading, and close a moment later. Closing
        # at once while the client still sends makes the kernel reset the connection, and the
        # client may never read the answer.
        self._force_close = True
        if self._waiter is not None:
            self._waiter.cancel()
        transport.write(raw_error(status, code, message))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, transport.close)

    # -- errors aiohttp meets itself --------------------------------------------------------

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
        self._limits.on_reject(code)
        if status >= 500:
            self.logger.warning("request failed before a handler: %s", type(exc).__name__)
        body = json.dumps({"error": {"code": code, "message": text}}).encode()
        response = web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
        response.force_close()
        return response


class _GuardedFactory:
    """Stands in for aiohttp's Server as the protocol factory; everything else is delegated."""

    def __init__(self, server: Any, limits: Limits) -> None:
        self._server = server
        self._limits = limits

    def __call__(self) -> GuardedRequestHandler:
        server = self._server
        return GuardedRequestHandler(
            server, loop=server._loop, limits=self._limits, **server._kwargs
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


_HANDLE_REQUEST = RequestHandler._handle_request.__code__
TaskFactory = Callable[..., Any]


def inline_request_tasks(previous: TaskFactory | None) -> TaskFactory:
    """A task factory that runs aiohttp's per-request coroutine in its connection's own task.

    aiohttp's request handler awaits a new task per request, `_handle_request` (for a fresh
    copy of the context variables, which the broker does not use). From Python 3.12 that task
    starts eagerly, so a request answered without waiting never passes through the event loop;
    on 3.11 it costs a loop iteration and a Task for each request, about a sixth of a cache
    hit. On 3.11 the runner installs this factory: that one coroutine is handed back to be
    awaited in place (what an eager task that finishes at once amounts to); every other task is
    created as before, by `previous` if a factory was already set."""

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if getattr(coro, "cr_code", None) is _HANDLE_REQUEST:
            return coro
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    factory.inline_requests = True  # type: ignore[attr-defined]
    return factory


class GuardedServerRunner(web.ServerRunner):
    """aiohttp's low-level runner with the guarded protocol, and the broker's lifecycle: the
    broker starts before the first connection is accepted and closes after the last request."""

    def __init__(
        self,
        server: web.Server,
        *,
        limits: Limits,
        start: Callable[[], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(server, **kwargs)
        self.limits = limits
        self._start, self._close = start, close
        self._restore: tuple[asyncio.AbstractEventLoop, TaskFactory | None] | None = None

    async def _make_server(self) -> Any:
        await self._start()
        if sys.version_info < (3, 12):  # later Pythons start aiohttp's request tasks eagerly
            loop = asyncio.get_running_loop()
            previous = loop.get_task_factory()
            if not getattr(previous, "inline_requests", False):  # another runner's is as good
                self._restore = (loop, previous)
                loop.set_task_factory(inline_request_tasks(previous))
        return _GuardedFactory(await super()._make_server(), self.limits)

    async def _cleanup_server(self) -> None:
        if self._restore is not None:
            loop, previous = self._restore
            loop.set_task_factory(previous)
            self._restore = None
        await self._close()
