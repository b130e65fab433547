"""`Answer`: a 200 with fixed headers, sent in one write, for the answers served most (a cached
token). Byte for byte what aiohttp's `web.Response` sends, without its per-request machinery.

aiohttp prepares every response the general way: a header multidict, cookies, compression,
chunking, keep-alive and content-length rules, then serialization. For a token answer nearly
all of that is known in advance; the head's fixed part is built once per content type, and a
request only adds its length, the date and the body. That one case is all `Answer` writes
itself: an HTTP/1.1 request that keeps its connection open, not HEAD. Anything else (HTTP/1.0,
`Connection: close`, an answer told to close, a body left unread) goes through a real
`web.Response` with the same status, headers and body, so aiohttp's rules stay in charge of
every exceptional case. No request byte ever reaches the head: it is made of constants, a
length and the date, so nothing a caller sends can inject into it.

`tests/test_answer.py` holds it to that: the same answer through both paths, compared byte for
byte except the date.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

_SERVER = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode()
_date_second = -1
_date_line = b""


def _date() -> bytes:
    """`Content-Length` is done: this ends its line and adds the `Date` line, formatted once a
    second (as aiohttp formats it: IMF-fixdate)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_line = f"\r\nDate: {formatdate(now, usegmt=True)}".encode()
        _date_second = now
    return _date_line


class Head:
    """The fixed part of a 200's head for one set of headers, built once."""

    __slots__ = ("headers", "prefix")

    def __init__(self, headers: dict[str, str]) -> None:
        for name, value in headers.items():  # our own constants, but never a line break
            if any(c in name + value for c in "\r\n\x00") or not name.isascii():
                raise ValueError(f"bad header {name!r}")
        self.headers = headers
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.prefix = f"HTTP/1.1 200 OK\r\n{lines}Content-Length: ".encode()


class Answer:
    """A 200 answer: `Head` and body. Duck-types the parts of `web.StreamResponse` that the
    broker's wrapper and aiohttp's request handler use (status, keep_alive, force_close,
    prepare, write_eof, body_length, and the mapping's get)."""

    __slots__ = ("_body", "_head", "_keep_alive", "_real")
    status = 200
    reason = "OK"

    def __init__(self, head: Head, body: bytes) -> None:
        self._head = head
        self._body = body
        self._keep_alive = True
        self._real: web.Response | None = None

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive if self._real is None else bool(self._real.keep_alive)

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def body_length(self) -> int:
        return len(self._body)

    @property
    def headers(self) -> dict[str, str]:
        return {**self._head.headers, "Content-Length": str(len(self._body))}

    def force_close(self) -> None:
        self._keep_alive = False

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    async def prepare(self, request: web.BaseRequest) -> None:
        if (
            self._keep_alive
            and request.version == HttpVersion11
            and request.keep_alive
            and request.method != "HEAD"
        ):
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            body = self._body
            data = b"%b%d%b%b%b" % (self._head.prefix, len(body), _date(), _SERVER, body)
            transport.write(data)
            writer = request.writer
            writer.output_size += len(data)
            if transport.get_write_buffer_size():  # the client reads slowly: wait, as aiohttp
                await writer.drain()
            return
        real = self._real = web.Response(body=self._body, headers=self._head.headers)
        if not self._keep_alive:
            real.force_close()
        await real.prepare(request)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._real is not None:
            await self._real.write_eof(data)
