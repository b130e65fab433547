"""`Answer`, the cache hit's one-write 200, sends what aiohttp's own `web.Response` sends, and
hands every case it does not write itself (HTTP/1.0, Connection: close, HEAD, a body left
unread) to aiohttp. Also: nothing is lost or reordered when callers pipeline, read slowly or
vanish; and on Python 3.11 a request is handled in its connection's task."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from email.utils import parsedate_to_datetime
from types import SimpleNamespace

import pytest
from aiohttp import web

from broker.core.render import JSON, TEXT
from broker.http.answer import Answer
from broker.http.common import HEADERS, HEADS
from broker.http.protocol import inline_request_tasks
from tests.conftest import make_settings
from tests.test_security import raw

BODY = b'{"access_token": "eyJ.x.y", "expires_in": 3599}'
BIG = b"x" * (16 * 2**20)  # far more than the socket buffers hold


@pytest.fixture
async def twin_server():
    """aiohttp's low-level server answering /answer with an `Answer` and /response with the
    same status, headers and body as an aiohttp `web.Response`."""

    async def handler(request: web.BaseRequest) -> object:
        if request.path == "/big":
            calls.append(request.path)
            return Answer(HEADS[TEXT], BIG)
        media = TEXT if "text" in request.query_string else JSON
        if request.path == "/answer":
            answer = Answer(HEADS[media], BODY)
            if request.can_read_body:  # as the broker's wrapper does
                answer.force_close()
            return answer
        response = web.Response(body=BODY, headers=HEADERS[media])
        if request.can_read_body:
            response.force_close()
        return response

    calls: list[str] = []
    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield SimpleNamespace(port=runner.addresses[0][1], calls=calls)
    await runner.cleanup()


def without_date(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


@pytest.mark.parametrize(
    "request_head",
    [
        "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n",  # the one case Answer writes itself
        "GET {path}?text HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n",
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n",
        "GET {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        # HEAD answered (no body), then a last request that closes: all of it read to EOF
        "HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n",
        "GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ],
)
async def test_an_answer_is_byte_for_byte_what_aiohttp_sends(twin_server, request_head):
    async def exchange(path: str) -> bytes:
        data = request_head.format(path=path).encode()
        if not data.startswith(b"HEAD"):
            return await raw(f"127.0.0.1:{twin_server.port}", data)
        reader, writer = await asyncio.open_connection("127.0.0.1", twin_server.port)
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 10)  # to the server's close
        writer.close()
        return answer

    ours, theirs = await exchange("/answer"), await exchange("/response")
    assert without_date(ours) == without_date(theirs)
    assert ours.count(b"\r\nDate: ") == request_head.count("HTTP/1.")


async def test_an_answer_waits_for_a_caller_that_reads_slowly(twin_server):
    """Two 16 MB answers pipelined to a caller that reads nothing yet: the first waits in
    the server for the caller to read (the second request is not even started), instead of
    being buffered whole in memory; once read, both arrive complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", twin_server.port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    loop_turns = 0
    while not twin_server.calls and loop_turns < 10_000:
        await asyncio.sleep(0)
        loop_turns += 1
    for _ in range(200):  # the server gets many turns of the loop to (wrongly) go on
        await asyncio.sleep(0)
    assert twin_server.calls == ["/big"]
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"Content-Length: %d\r\n" % len(BIG) in head
        assert await asyncio.wait_for(reader.readexactly(len(BIG)), 10) == BIG
    writer.close()
    assert twin_server.calls == ["/big", "/big"]


async def test_the_date_is_now_in_http_form(twin_server):
    answer = await raw(f"127.0.0.1:{twin_server.port}", b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n")
    date = re.search(rb"\r\nDate: ([^\r]*)", answer).group(1).decode()
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", date), date
    assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 5


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


async def test_the_inline_factory_runs_only_aiohttps_request_coroutine_in_place():
    from aiohttp.web_protocol import RequestHandler

    made = []

    def previous(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop = asyncio.get_running_loop()
    factory = inline_request_tasks(previous)

    async def other() -> int:
        return 7

    coro = other()
    task = factory(loop, coro)
    assert isinstance(task, asyncio.Task) and made == [coro]  # chained to the previous one
    assert await task == 7

    request_coro = RequestHandler._handle_request(object(), None, None, None)
    try:
        assert factory(loop, request_coro) is request_coro  # handed back, not scheduled
        assert made == [coro]
    finally:
        request_coro.close()


async def test_the_runner_installs_the_factory_on_311_only_and_removes_it(
    sandbox, secret, run_server
):
    """On 3.11 the factory is installed while the runner serves, and removed when it stops;
    from 3.12, where aiohttp starts request tasks eagerly, it is never installed."""
    loop = asyncio.get_running_loop()
    before = loop.get_task_factory()
    addresses, _ = await run_server(make_settings(sandbox, secret))
    installed = getattr(loop.get_task_factory(), "inline_requests", False)
    assert installed == (sys.version_info < (3, 12))
    answer = await raw(
        addresses[0], b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK")
    await run_server.stop_all()
    assert loop.get_task_factory() is before
