"""The connection gate on its own (a fake transport, every way a head can be cut into packets)
and on the broker's server: it learns that a request ended from aiohttp (whatever answered
it), and its one timer per connection enforces the deadline in force, not a stale one."""

from __future__ import annotations

import asyncio
import re

import pytest

from broker.config.settings import ServerSettings
from broker.http.protocol import Gate, Gates
from tests.conftest import make_settings
from tests.support import mirror_head, raw, request_of_head_size

BUDGET = 200  # max_header_bytes in the unit tests: heads near it are quick to cut every way


class Transport:
    """What the gate uses of an asyncio transport; records what the gate writes itself."""

    def __init__(self) -> None:
        self.written = b""
        self.closing = False

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


class Handler:
    """Stands in for aiohttp's request handler: keeps what the gate passes on."""

    def __init__(self) -> None:
        self.received = b""

    def connection_made(self, transport) -> None:
        pass

    def connection_lost(self, exc) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.received += data


def gate() -> tuple[Gate, Transport, Handler]:
    server = ServerSettings(max_header_bytes=BUDGET, read_timeout=30.0)
    handler = Handler()
    g = Gate(Gates(settings=lambda: server, on_reject=lambda reason: None), lambda: handler)
    transport = Transport()
    g.connection_made(transport)
    return g, transport, handler


def head_of(size: int) -> bytes:
    start, end = b"POST /generatetoken HTTP/1.1\r\nHost: localhost\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


async def test_a_head_is_counted_to_its_blank_line_however_it_is_cut():
    """A head of exactly the budget, with a body twice the budget behind it, cut into two
    packets at every byte: nothing refused, every byte passed on. One byte more of head, cut
    anywhere: 431, and the bytes past the budget are never passed on."""
    request = head_of(BUDGET) + b"b" * (2 * BUDGET)
    for cut in range(1, len(request)):
        g, transport, handler = gate()
        g.data_received(request[:cut])
        g.data_received(request[cut:])
        assert transport.written == b"", cut
        assert handler.received == request, cut
        g.connection_lost(None)
    over = head_of(BUDGET + 1)
    for cut in range(1, len(over)):
        g, transport, handler = gate()
        g.data_received(over[:cut])
        g.data_received(over[cut:])
        assert transport.written.startswith(b"HTTP/1.1 431 "), cut
        assert len(handler.received) <= BUDGET, cut
        g.connection_lost(None)


async def test_a_head_in_single_bytes_is_held_to_the_budget():
    for size, refused in ((BUDGET, False), (BUDGET + 1, True)):
        g, transport, handler = gate()
        for byte in head_of(size):
            g.data_received(bytes([byte]))
        assert transport.written.startswith(b"HTTP/1.1 431 ") is refused, size
        assert len(handler.received) == (BUDGET if refused else size)
        g.connection_lost(None)


ANSWERS = {  # a request, and the status it is answered with
    "aiohttp itself (OPTIONS *, no route)": (b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    "the catch-all route": (b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    "a method not allowed": (b"DELETE /v1/token HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
    "the origin guard": (b"GET /v1/token/default HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    "the desk (unknown profile)": (
        b"GET /v1/token/nobody HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n",
        404,
    ),
    "a token": (
        b"GET /v1/token/default HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n",
        200,
    ),
    "a request with a body (the mirror)": (mirror_head(2) + b"{}", 400),
}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
async def test_every_answer_ends_the_request_for_the_gate(sandbox, secret, run_server, answer):
    """Whoever answers (aiohttp itself, a route, a refusal, a token), the gate hears of the
    answer, so the next head on the connection is counted (431) and not left to aiohttp's
    per-line limits."""
    request, status = answer
    (address,), _ = await run_server(make_settings(sandbox, secret))
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 %d " % status), head[:80]
        await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
        writer.write(request_of_head_size(8192 + 1))  # each line within aiohttp's own limit
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


async def test_the_deadline_follows_the_requests_on_a_kept_alive_connection(
    sandbox, secret, run_server
):
    """read_timeout 0.3 s: a kept-alive connection idle for longer than that between
    requests is still served (the gate's timer, set for its first head, finds nothing due),
    and a head that then stalls is 408 (the timer set again for it)."""
    settings = make_settings(sandbox, secret, server="read_timeout = 0.3")
    (address,), _ = await run_server(settings)
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), head
            await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
            await asyncio.sleep(0.5)  # idle past read_timeout: real time, the gate's timer
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finished
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert (await raw(address, request)).startswith(b"HTTP/1.1 200 ")


async def test_a_body_still_arriving_after_its_answer_ends_the_connection_at_its_deadline(
    sandbox, secret, run_server
):
    """read_timeout 0.3 s: a request answered without its body being read (/healthz), whose
    body never arrives in full, has its connection ended by the gate at the request's
    deadline, counted as a request_timeout (aiohttp alone would drain the body after the
    answer, for its own lingering time, and count nothing)."""
    settings = make_settings(sandbox, secret, server="read_timeout = 0.3")
    (address,), _ = await run_server(settings)
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        writer.write(b"x" * 10)  # and never the other 90 bytes
        answer = await asyncio.wait_for(reader.read(), 10)  # until the broker closes its side
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    scrape = await raw(address, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b'broker_rejected_requests_total{reason="request_timeout"} 1.0' in scrape


@pytest.mark.parametrize(
    "head",
    [b"GET /healthz HTTP/1.1\nHost: localhost\n\n", b"GET /healthz HTTP/1.1\r\nHost: x\n\n"],
    ids=["bare LF lines", "a bare LF blank line"],
)
async def test_a_head_ended_by_a_bare_lf_is_refused_at_once(sandbox, secret, run_server, head):
    """The gate ends a head at CRLF CRLF only: a head ended otherwise is one aiohttp refuses
    too (400, at once), never one it serves while the gate still counts it."""
    (address,), _ = await run_server(make_settings(sandbox, secret, server="read_timeout = 30"))
    answer = await asyncio.wait_for(raw(address, head), 5)  # well before read_timeout
    assert answer.split(b" ", 2)[1] == b"400", answer[:80]  # (HTTP/1.0: aiohttp read no version)
    assert b'"bad_request"' in answer
