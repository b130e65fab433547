"""What aiohttp's server lacks, on public APIs only: a cap on open connections, and a budget
and a deadline for each request's head and body.

aiohttp bounds each header line but not a head, closes a connection whose head never completes
only after its keep-alive timeout (without an answer), waits for a dripping body as long as it
drips, and has no connection cap. So every connection goes through a `Gate`, an asyncio protocol
in front of aiohttp's request handler, which passes on every event and the bytes it lets through:

- a connection the pool (`broker.http.pool`) does not admit is answered 429 and closed;
- a head (request line and headers, counted to its blank line by `broker.http.heads`: never a
  body, never requests pipelined after it) over `max_header_bytes` is 431 (a request line that
  long: 414); one not complete `read_timeout` after its first byte is 408; a connection silent
  that long is closed;
- a body must be in `read_timeout` after its head's first byte: `read_body`
  (`broker.http.bodies`) raises `BodyTimeout` then (the handler answers 408), and a body still
  arriving when its answer is sent ends the connection at that deadline.

The 429, 431, 414 and 408 come before aiohttp has a request to answer, so the gate writes them
itself: constants (nothing of the request), on a connection aiohttp never writes to (it holds no
complete request, and is fed nothing more). A refusal is a lingering close (answer, write side
shut, closed a second later) so the client reads the answer instead of a reset.

The gate sees a head end in the bytes it passes on, and learns that its answer was sent from
aiohttp itself: aiohttp calls a connection's access logger once each answer is written (or the
caller is found gone), whoever answered it, and the broker's (`broker.http.server.Answered`)
tells the gate. So it counts a head where it knows one starts: at a connection's first byte,
and after an answer when all received so far was that request (its head and Content-Length
body); the connection is then idle for the pool. A head pipelined behind a request without a
body is counted from the answer on, from the bytes kept since (at most a head's budget); behind
one with a body, or past that budget, it is held by aiohttp's own line limits and keep-alive
timeout instead.

Each connection has one `broker.http.deadline.Deadline` (a head's first byte sets it, its end
clears it). Limits are read from the settings in force at each connection and each head's first
byte: a reload applies them to the next head (aiohttp's line limits and lingering time: to
new connections).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from broker.config.settings import ServerSettings
from broker.http.callers import Caller, caller_of
from broker.http.deadline import Deadline
from broker.http.heads import END, Head
from broker.http.pool import Peer, Pool, limits_of

LINGER = 1.0  # s a refused connection stays half-open so its answer is read, not reset


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
        self.pool = Pool(lambda: limits_of(self.settings()), Gate.close_idle)


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
        self._time = self._loop.time
        self.transport: asyncio.Transport | None = None
        self.peer: Caller | None = None  # who is on the other end, known when admitted
        self._inner: Any = None  # aiohttp's request handler, once admitted
        self._done = False  # refused or closing: nothing more is forwarded
        # The head being counted, and the request it starts.
        self._counting = True  # the bytes arriving now are a head's
        self._head = Head()
        self._server: ServerSettings = gates.settings()  # in force at its first byte
        self._started = 0.0  # loop time of its first byte
        self._counted = False  # the current request's head was counted (its start is known)
        self._after_head = 0  # bytes received after the counted head's blank line
        self._rest: bytes | None = b""  # those bytes while within a head's budget (else None)
        self._body: Any = None  # a body still arriving after its answer (aiohttp's stream)
        # The head's deadline, then the body's after its answer (one loop timer at most).
        self._deadline = Deadline(self._loop, self._overdue)

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        gates = self._gates
        gates.open.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            # Who connected, as the kernel recorded it at connect(): decided now, once.
            self.peer = caller_of(transport)
            peer = Peer(f"uid:{self.peer.uid}", unix=True)
        else:
            address = transport.get_extra_info("peername")
            peer = Peer(f"tcp:{address[0] if address else '?'}", unix=False)
        why = gates.pool.admit(self, peer)
        if why is not None:  # counted by its reason; the caller is told one code
            self._refuse(429, "too_many_connections", _REFUSALS[why], reason=why)
            return
        if self.peer is None:
            self.peer = caller_of(transport)  # a TCP caller: its address
        self._inner = self._make_handler()
        self._inner.connection_made(transport)
        # A connection that says nothing is closed (and its first head is due) by then.
        self._server = server = gates.settings()
        self._deadline.set(self._time() + server.read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gates.open.discard(self)
        self._gates.pool.remove(self)
        self._done = True
        self._deadline.cancel()
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

    # -- bytes in -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if not self._counting:
            self._after_head += len(data)
            rest = self._rest
            if rest is not None:  # a pipelined head's start, kept while it may be one
                fits = len(rest) + len(data) <= self._server.max_header_bytes
                self._rest = rest + data if fits else None
        elif self._head.size:  # more of a head begun in an earlier packet
            if self._count(data):
                return  # refused
        else:  # a head's first byte: a request is arriving, held by the limits in force now
            self._gates.pool.busy(self)
            server = self._server = self._gates.settings()
            self._started = self._time()
            end = data.find(END) + 4  # (-1 + 4 when it is not there)
            if 4 <= end <= server.max_header_bytes:  # the usual head: whole, in budget
                self._deadline.at = 0.0  # (a new connection's: met)
                self._counting, self._counted = False, True
                self._after_head = after = len(data) - end
                self._rest = data[end:] if after else b""
            else:
                if not self._deadline.at:  # (a new connection's first head is due when it was)
                    self._deadline.set(self._started + server.read_timeout)
                if self._count(data):
                    return  # refused
        self._inner.data_received(data)

    def _count(self, data: bytes) -> bool:
        """Count a head in several packets, or over budget; refuse it when over. True when
        refused."""
        head = self._head
        end = head.feed(data)
        refusal = head.refusal(self._server.max_header_bytes)
        if refusal is not None:
            self._refuse(*refusal)
            return True
        if end >= 0:  # the head is complete: its deadline is met
            self._deadline.at = 0.0
            self._counting, self._counted = False, True
            self._after_head = after = len(data) - end
            self._rest = data[end:] if after else b""
            head.reset()
        return False

    # -- answers, as aiohttp reports them ------------------------------------------------------

    def answered(self, request: web.BaseRequest) -> None:
        """A request's answer was sent (or its caller found gone): the next head is counted if
        everything received so far was this request (its head, and a body of its
        Content-Length), and the connection waits for it, idle."""
        if self._done:
            return
        if request.body_exists:
            self._answered_with_body(request)
        elif self._counted and not self._after_head:
            self._counting, self._counted = True, False
            self._gates.pool.idle(self)
        elif self._counted and self._rest:  # a request pipelined behind it
            self._pipelined(self._rest)
        else:
            self._counted = False  # pipelined past a head's budget: aiohttp's limits hold

    def _pipelined(self, rest: bytes) -> None:
        """The bytes received after the answered request start the next head: it is held to
        the budget, and to `read_timeout` from now while it is still arriving (or, whole, it
        is counted like any other and its answer comes next)."""
        self._counted, self._rest = False, b""
        self._server = server = self._gates.settings()
        self._started = self._time()
        head = self._head
        end = head.feed(rest)
        refusal = head.refusal(server.max_header_bytes)
        if refusal is not None:
            self._refuse(*refusal)
        elif end < 0:  # still arriving: counted as any head in several packets
            self._counting = True
            self._deadline.set(self._started + server.read_timeout)
        else:
            head.reset()
            self._counted = True
            self._after_head = after = len(rest) - end
            self._rest = rest[end:] if after else b""

    def _answered_with_body(self, request: web.BaseRequest) -> None:
        """With its body still arriving, the connection ends at the request's deadline."""
        if request.content.is_eof():
            if self._counted and self._after_head == request.content_length:
                self._counting = True
                self._gates.pool.idle(self)
            self._counted = False  # else pipelined, or a chunked body
            return
        by = self.body_deadline()[0]
        self._counted = False
        if self._time() >= by:
            self._gates.on_reject("request_timeout")
            self._linger()
        else:
            self._body = request.content
            self._deadline.set(by)

    def body_deadline(self) -> tuple[float, float]:
        """(loop time, seconds): when the body of the request being handled must be in by.
        From its head's first byte when the gate counted it, else from now."""
        if self._counted:
            seconds = self._server.read_timeout
            return self._started + seconds, seconds
        seconds = self._gates.settings().read_timeout
        return self._time() + seconds, seconds

    def close_idle(self) -> None:
        """Closed to make room for a caller with a request to make: this connection was
        waiting between requests (the pool chose it, oldest idle first)."""
        self._done = True
        self._deadline.at = 0.0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- the deadline and refusals --------------------------------------------------------------

    def _overdue(self) -> None:
        """The deadline in force came: a body still arriving after its answer ends the
        connection; a head still arriving is 408; a connection that said nothing is closed."""
        if self._done:
            return
        body, self._body = self._body, None
        if body is not None:  # answered while its body was still arriving
            if not body.is_eof():
                self._gates.on_reject("request_timeout")
                self._linger()
        elif not self._counting:
            return  # a request is being handled: its body deadline is `bodies.read_body`'s
        elif self._head.size:
            seconds = self._server.read_timeout
            self._refuse(
                408, "request_timeout", f"the request head did not arrive within {seconds:g} s"
            )
        elif self.transport is not None:
            self.transport.close()  # connected and said nothing: just close

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
        self._deadline.at = 0.0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, transport.close)
