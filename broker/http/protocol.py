"""What aiohttp's server lacks, on public APIs only: a cap on open connections, and a budget
and a deadline for each request's head and body.

aiohttp bounds each header line but not a head, closes a connection whose head never completes
only after its keep-alive timeout (without an answer), waits for a dripping body as long as it
drips, and has no connection cap. So every accepted connection goes through a `Gate`, an asyncio
protocol (`loop.create_server`'s contract) in front of aiohttp's request handler, to which it
passes every event and the bytes it lets through:

- more than `max_connections` open: the new one is answered 429 and closed;
- a head (request line and headers, counted to its blank line: never a body, never requests
  pipelined after it) over `max_header_bytes` is 431 (a request line that long: 414); one not
  complete `read_timeout` after its first byte is 408; a connection silent that long is closed;
- a body must be in `read_timeout` after its head's first byte: `read_body` raises
  `BodyTimeout` then (the handler answers 408) and the connection closes at that deadline.

The 429, 431, 414 and 408 come before aiohttp has a request to answer, so the gate writes them
itself: constants (nothing of the request), on a connection aiohttp never writes to (it holds no
complete request, and is fed nothing more). A refusal is a lingering close (answer, write side
shut, closed a second later) so the client reads the answer instead of a reset.

The gate learns where requests start and end from `track` (a middleware, which finds the gate as
the transport's protocol), and counts a head only where it knows one starts: at a connection's
first byte, and after an answer when all received so far was that request (its head and
Content-Length body). Heads pipelined behind another are held by aiohttp's own line limits and
keep-alive timeout instead. Limits are read from the settings in force at each use: a reload
applies them at once (aiohttp's line limits and lingering time: to new connections).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from broker.config.settings import ServerSettings
from broker.core.upstream.streams import read_limited
from broker.http.callers import PEER, Caller, caller_of
from broker.http.common import BodyTimeout
from broker.http.pool import Limits, Peer, Pool

LINGER = 1.0  # s a refused connection stays half-open so its answer is read, not reset


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # loop time the request's body must be in by
    seconds: float  # read_timeout when the request started


DEADLINE = web.RequestKey("deadline", Deadline)


def raw_error(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer for a connection without a request (yet)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    phrase = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode() + body


@dataclass
class Gates:
    """What every connection of one server shares: the settings in force, the refusal counter,
    the connections open, and the pool that decides who may hold them (`broker.http.pool`)."""

    settings: Callable[[], ServerSettings]
    on_reject: Callable[[str], None]
    open: set[Gate] = field(default_factory=set)
    pool: Pool[Gate] = field(init=False)

    def __post_init__(self) -> None:
        self.pool = Pool(self._limits, Gate.close_idle)

    def _limits(self) -> Limits:
        s = self.settings()
        # The unix socket's share: only where there is one, and never more than a quarter.
        unix = any(listen.kind == "unix" for listen in s.listen)
        reserved = min(s.unix_reserved_connections, s.max_connections // 4) if unix else 0
        per_peer = s.max_connections_per_peer or s.max_connections
        return Limits(s.max_connections, per_peer, reserved)


_REFUSALS = {
    "too_many_connections": "the broker is at its connection limit",
    "peer_limit": "this caller holds its share of the broker's connections",
    "tcp_limit": "the broker's connections for TCP callers are all taken",
}


class Gate(asyncio.Protocol):
    """One connection, in front of aiohttp's request handler for it (made when admitted)."""

    def __init__(self, gates: Gates, handler: Callable[[], asyncio.Protocol]) -> None:
        self._gates = gates
        self._make_handler = handler
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._inner: Any = None  # aiohttp's request handler, once admitted
        self._peer: Caller | None = None
        self._done = False  # refused or closing: nothing more is forwarded
        self._busy = False  # a request is being handled, from its start to its answer sent
        self._counting = True  # the bytes arriving now are a head's
        self._head_bytes = 0
        self._line_bytes = 0  # of the request line
        self._line_done = False
        self._tail = b""  # the head's last bytes so far, to find its end across packets
        self._head_started = 0.0
        self._counted = False  # the current request's head was counted (its start is known)
        self._after_head = 0  # bytes received after the counted head's blank line
        self._timer: asyncio.TimerHandle | None = None  # the head's, or the body's, deadline
        self._body: Any = None  # a body still arriving (aiohttp's stream)
        self._deadline = 0.0  # loop time it must be in by

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        gates = self._gates
        gates.open.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            # Who connected, as the kernel recorded it at connect(): decided now, once.
            self._peer = caller_of(transport)
            peer = Peer(f"uid:{self._peer.uid}", unix=True)
        else:
            address = transport.get_extra_info("peername")
            peer = Peer(f"tcp:{address[0] if address else '?'}", unix=False)
        why = gates.pool.admit(self, peer)
        if why is not None:  # counted by its reason; the caller is told one code
            self._refuse(429, "too_many_connections", _REFUSALS[why], reason=why)
            return
        self._inner = self._make_handler()
        self._inner.connection_made(transport)
        self._arm(gates.settings().read_timeout)  # a connection that says nothing is closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._gates.open.discard(self)
        self._gates.pool.remove(self)
        self._done = True
        self._disarm()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def caller(self) -> Caller:
        """Who is on the other end, worked out once per connection (not once per request):
        a unix-socket peer when it connected, a TCP peer (an address) at its first request."""
        if self._peer is None:
            self._peer = caller_of(self.transport)
        return self._peer

    # -- bytes in -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._gates.pool.busy(self)  # a request is arriving: not idle
        if self._counting:
            if self._count_head(data):
                return  # refused
        else:
            self._after_head += len(data)
        self._inner.data_received(data)

    def _count_head(self, data: bytes) -> bool:
        """Count the bytes of `data` that belong to the head (up to its blank line); refuse
        the request when over budget. True when refused."""
        server = self._gates.settings()
        if not self._head_bytes and not self._tail:
            self._head_started = self._loop.time()
            if self._timer is None:
                self._arm(server.read_timeout)
        end = _head_end(self._tail, data)
        head = len(data) if end < 0 else end
        self._head_bytes += head
        if not self._line_done:
            line_end = data.find(b"\n", 0, head)
            self._line_bytes += head if line_end < 0 else line_end
            self._line_done = line_end >= 0
        limit = server.max_header_bytes
        if self._head_bytes > limit:
            if self._line_bytes > limit or not self._line_done:
                self._refuse(414, "uri_too_long", "the request line is too long")
            else:
                self._refuse(431, "headers_too_large", f"request headers over {limit} bytes")
            return True
        if end < 0:
            self._tail = (self._tail + data)[-2:]
            return False
        self._disarm()  # the head is complete: its deadline is met
        self._counting, self._counted = False, True
        self._after_head = len(data) - end
        return False

    # -- requests, as the middleware sees them ---------------------------------------------

    def started(self, request: web.BaseRequest) -> Deadline:
        """A request's handler starts: when its body must be in by."""
        self._busy, self._counting = True, False
        self._disarm()
        seconds = self._gates.settings().read_timeout
        started = self._head_started if self._counted else self._loop.time()
        self._deadline = started + seconds
        body = request.content
        if request.body_exists and not body.is_eof():
            self._body = body
            self._timer = self._loop.call_at(self._deadline, self._body_overdue)
        return Deadline(self._deadline, seconds)

    def finished(self, request: web.BaseRequest) -> None:
        """Its answer is sent. Past the deadline with the body still arriving: close. Else the
        next head is counted if everything received so far was this request."""
        self._busy = False
        body = self._body
        if body is not None and not body.is_eof():
            if self._loop.time() >= self._deadline:
                if self._timer is not None:  # the deadline's own timer has not run yet
                    self._gates.on_reject("request_timeout")
                self._linger()
            return  # else the timer closes the connection at the deadline
        self._disarm()
        self._body = None
        length = (request.content_length or -1) if request.body_exists else 0
        if self._counted and self._after_head == length:
            self._counting, self._counted = True, False
            self._head_bytes = self._line_bytes = 0
            self._line_done, self._tail = False, b""
            self._gates.pool.idle(self)  # answered, nothing more received: it waits, idle
        else:
            self._counted = False  # pipelined, or a chunked body: aiohttp's own limits hold

    def close_idle(self) -> None:
        """Closed to make room for a caller with a request to make: this connection was
        waiting between requests (the pool chose it, oldest idle first)."""
        self._done = True
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- deadlines and refusals -------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self._loop.call_later(delay, self._head_too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_too_slow(self) -> None:
        self._timer = None
        if self._busy or not self._counting:
            return
        if self._head_bytes or self._tail:
            timeout = self._gates.settings().read_timeout
            self._refuse(
                408, "request_timeout", f"the request head did not arrive within {timeout:g} s"
            )
        elif self.transport is not None:
            self.transport.close()  # connected and said nothing: just close

    def _body_overdue(self) -> None:
        """The body's deadline passed with the body incomplete. A handler reading it gets
        BodyTimeout (see `read_body`) and the connection closes when its answer is sent; if
        that answer went already, aiohttp is draining the body: close now."""
        self._timer = None
        self._gates.on_reject("request_timeout")
        if not self._busy:
            self._linger()

    def _refuse(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        self._gates.on_reject(reason or code)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(raw_error(status, code, message))
        self._linger()

    def _linger(self) -> None:
        """Stop reading, shut the write side, close a moment later: closing at once while the
        client still sends makes the kernel reset the connection, and the client may never
        read the answer."""
        self._done = True
        self._disarm()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, transport.close)


def _head_end(tail: bytes, data: bytes) -> int:
    """Where in `data` the head ends (just past its blank line), or -1; `tail` is the head's
    last bytes from earlier packets."""
    if tail:
        joined = tail + data[:3]
        ends = [i + len(m) for m in (b"\n\r\n", b"\n\n") if (i := joined.find(m)) >= 0]
        if ends:
            return min(ends) - len(tail)
    ends = [i + len(m) for m in (b"\n\r\n", b"\n\n") if (i := data.find(m)) >= 0]
    return min(ends) if ends else -1


@web.middleware
async def track(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the connection's gate when a request starts and when its answer is sent (the
    answer is sent here, before aiohttp reads the next request), and gives the request its
    body deadline."""
    transport = request.transport
    gate = transport.get_protocol() if transport is not None else None
    if not isinstance(gate, Gate):
        return await handler(request)
    request[DEADLINE] = gate.started(request)
    request[PEER] = gate.caller()
    try:
        response = await handler(request)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            pass  # the caller went away: aiohttp sees it too and ends the connection
        return response
    finally:
        gate.finished(request)


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request's body (at most `limit + 1` bytes), by its deadline or BodyTimeout."""
    deadline = request.get(DEADLINE)
    if deadline is None:
        return await read_limited(request.content, limit)
    try:
        async with asyncio.timeout_at(deadline.at):
            return await read_limited(request.content, limit)
    except TimeoutError:
        raise BodyTimeout(f"the request did not arrive within {deadline.seconds:g} s") from None
