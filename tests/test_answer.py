"""Answers on the broker's own server (the connection gate, aiohttp's request handler and
writer): every kind of request gets one complete answer, the server waits for a caller that
reads slowly, and nothing is lost or reordered when callers pipeline, read slowly or vanish."""

from __future__ import annotations

import asyncio
import json
import re
import time
from email.utils import parsedate_to_datetime

import pytest
from aiohttp import web

from broker.config.listen import Listen
from broker.core.tokens.render import JSON, TEXT
from broker.daemon.listeners import bind, bound_address
from broker.http.app import create_app
from broker.http.server import HttpServer
from tests.conftest import make_settings
from tests.support import raw

BIG = b"x" * (16 * 2**20)  # far more than the socket buffers hold
ASK = "Host: localhost\r\nMetadata: true\r\n"  # what every /v1 request carries


@pytest.mark.parametrize(
    "request_head",
    [
        "GET {path} HTTP/1.1\r\n{ask}\r\n",
        "GET {path} HTTP/1.1\r\n{ask}Accept: text/plain\r\n\r\n",
        "GET {path} HTTP/1.1\r\n{ask}Connection: close\r\n\r\n",
        "GET {path} HTTP/1.0\r\n{ask}\r\n",
        "GET {path} HTTP/1.0\r\n{ask}Connection: keep-alive\r\n\r\n",
        # HEAD answered (no body), then a last request that closes: all of it read to EOF
        "HEAD {path} HTTP/1.1\r\n{ask}\r\nGET {path} HTTP/1.1\r\n{ask}Connection: close\r\n\r\n",
        "GET {path} HTTP/1.1\r\n{ask}Content-Length: 3\r\n\r\nabc",
    ],
)
async def test_every_kind_of_request_gets_one_complete_answer(
    sandbox, secret, run_server, request_head
):
    """HTTP/1.0, Connection: close, HEAD, a body left unread: one whole answer per request,
    each with its Date, the connection closed where HTTP says so."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    data = request_head.format(path="/v1/token", ask=ASK).encode()
    if data.startswith(b"HEAD"):
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 10)  # to the server's close
        writer.close()
        assert re.findall(rb"HTTP/1\.1 (\d+) ", answer) == [b"405", b"200"]
    else:
        answer = await raw(address, data)
        assert re.match(rb"HTTP/1\.[01] 200 OK\r\n", answer), answer[:80]
    assert answer.count(b"\r\nDate: ") == request_head.count("HTTP/1.")


async def test_the_date_is_now_in_http_form(sandbox, secret, run_server):
    (address,), _ = await run_server(make_settings(sandbox, secret))
    answer = await raw(address, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    date = re.search(rb"\r\nDate: ([^\r]*)", answer).group(1).decode()
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 5


async def test_an_answer_waits_for_a_caller_that_reads_slowly(sandbox, secret):
    """Two 16 MB answers pipelined, through the broker's own server, to a caller that reads
    nothing yet: the first waits in the server for the caller to read (the second request is
    not even started), instead of being buffered whole in memory; once read, both arrive
    complete. (The gate passes the transport's flow control on to aiohttp.)"""
    calls: list[str] = []

    async def big(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(body=BIG)

    app = create_app(make_settings(sandbox, secret, profiles=""))
    app.router.add_get("/big", big)  # a test route: the broker answers nothing this big
    sock = bind(Listen.tcp("127.0.0.1", 0))
    server = HttpServer(app)
    await server.start([sock])
    try:
        host, port = bound_address(sock).rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2)
        loop_turns = 0
        while not calls and loop_turns < 10_000:
            await asyncio.sleep(0)
            loop_turns += 1
        for _ in range(200):  # the server gets many turns of the loop to (wrongly) go on
            await asyncio.sleep(0)
        assert calls == ["/big"]
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert b"Content-Length: %d\r\n" % len(BIG) in head
            assert await asyncio.wait_for(reader.readexactly(len(BIG)), 10) == BIG
        writer.close()
        assert calls == ["/big", "/big"]
    finally:
        await server.close()


async def test_pipelined_hits_come_back_complete_and_in_order(sandbox, secret, run_server):
    """300 requests in one write, the JSON and text answers interleaved: 300 answers, each
    whole and of its own kind, in the order asked."""
    addresses, _ = await run_server(make_settings(sandbox, secret))
    host, port = addresses[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    kinds = [JSON if i % 3 else TEXT for i in range(300)]
    writer.write(
        b"".join(
            b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nAccept: %b\r\n\r\n"
            % kind.encode()
            for kind in kinds
        )
    )
    seen = []
    for _ in kinds:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        body = await reader.readexactly(length)
        seen.append(JSON if body.startswith(b"{") else TEXT)
        if seen[-1] == JSON:
            assert json.loads(body)["access_token"]
    writer.close()
    assert seen == kinds


async def test_a_caller_that_does_not_read_loses_nothing(sandbox, secret, run_server):
    """4,000 pipelined requests while the caller reads nothing (megabytes of answers): the
    server waits for the caller instead of failing, and every answer arrives once read."""
    addresses, logs = await run_server(make_settings(sandbox, secret))
    host, port = addresses[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=2**20)
    request = b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n"
    count = 4000
    writer.write(request * count)
    await writer.drain()
    await asyncio.sleep(0.3)  # the server fills the socket buffers and must wait
    heads = 0
    while heads < count:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
        heads += 1
    writer.close()
    assert "Traceback" not in logs.getvalue()


async def test_callers_that_vanish_before_their_answer_break_nothing(sandbox, secret, run_server):
    """A caller that sends a request and resets the connection at once, 200 times: no
    traceback, no error line, and the next caller is served."""
    addresses, logs = await run_server(make_settings(sandbox, secret))
    host, port = addresses[0].rsplit(":", 1)
    request = b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n"
    for _ in range(200):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(request * 3)
        writer.transport.abort()
    answer = await raw(addresses[0], request)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert "Traceback" not in logs.getvalue()
    assert '"level": "error"' not in logs.getvalue()


async def test_the_server_leaves_the_event_loops_task_factory_alone(sandbox, secret, run_server):
    """No task factory is installed while the server runs (the old inline request tasks are
    gone): the loop's factory is the same before, while serving and after."""
    loop = asyncio.get_running_loop()
    before = loop.get_task_factory()
    addresses, _ = await run_server(make_settings(sandbox, secret))
    assert loop.get_task_factory() is before
    answer = await raw(
        addresses[0], b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK")
    await run_server.stop_all()
    assert loop.get_task_factory() is before
