"""A small stdlib HTTP client for the CLI's `token`, `status` and `healthcheck`: no aiohttp
import on that path, so `$(pc-token-broker token)` starts fast. TCP URL or unix socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8721"


class DaemonUnreachable(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


@dataclass(frozen=True)
class Target:
    url: str | None = None
    socket_path: str | None = None
    header: tuple[str, str] = ("Metadata", "true")


def target_from(url: str | None, socket_path: str | None, config_path: str) -> Target:
    """Where the daemon is: --url / --socket, else $PC_TOKEN_BROKER_URL, else the config's
    first listener. The required header comes from the config's [server] when readable."""
    header = ("Metadata", "true")
    listen: list[str] = []
    try:
        with open(config_path, "rb") as f:
            server = tomllib.load(f).get("server", {})
        name, sep, value = str(server.get("required_header", "")).partition(":")
        if sep:
            header = (name.strip(), value.strip())
        listen = [x for x in server.get("listen", []) if isinstance(x, str)]
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        pass
    if url or socket_path:
        return Target(url, socket_path, header)
    if os.environ.get("PC_TOKEN_BROKER_URL"):
        return Target(os.environ["PC_TOKEN_BROKER_URL"], None, header)
    if listen:
        first = listen[0]
        if first.startswith("unix:"):
            return Target(None, first[5:], header)
        host = first.rpartition(":")[0]
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        return Target(f"http://{host}:{first.rpartition(':')[2]}", None, header)
    return Target(DEFAULT_URL, None, header)


def request(
    target: Target,
    method: str,
    path: str,
    *,
    accept: str = "application/json",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request; returns (status, body). DaemonUnreachable when nothing answers."""
    headers = {"Accept": accept, target.header[0]: target.header[1]}
    try:
        if target.socket_path:
            conn: http.client.HTTPConnection = _UnixConnection(target.socket_path, timeout)
            headers["Host"] = "localhost"
        else:
            parts = urllib.parse.urlsplit(target.url or DEFAULT_URL)
            cls = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
            path = parts.path.rstrip("/") + path
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        where = target.socket_path or target.url
        raise DaemonUnreachable(f"cannot reach the broker at {where}: {e}") from None


def error_message(status: int, body: bytes) -> str:
    """The broker's JSON error as one line."""
    try:
        error: Any = json.loads(body)["error"]
        text = f"{error['code']}: {error['message']}"
        if error.get("upstream_status"):
            text += f" (upstream status {error['upstream_status']})"
        return f"HTTP {status}: {text}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"
