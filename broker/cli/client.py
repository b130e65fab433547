"""A small stdlib HTTP client for the CLI's `token`, `refresh`, `exec`, `status` and
`healthcheck`: no aiohttp import on that path, so `$(pc-token-broker token)` starts fast.
TCP URL or unix socket.

Where the daemon is, first match wins:
  1. --url URL / --socket PATH
  2. $PC_TOKEN_BROKER_URL / $PC_TOKEN_BROKER_SOCKET (for tools that cannot read the daemon's
     0600 config)
  3. the first `listen` entry of the config's [server] table
  4. http://127.0.0.1:8721
The required header comes from $PC_TOKEN_BROKER_HEADER, else the config, else `Metadata: true`.
Only the config's [server] table is read, checked by the schema `serve` uses (the config's
secrets are not read). A config named explicitly (--config or $PC_TOKEN_BROKER_CONFIG) must be
readable TOML, else `TargetError` (exit 2): never a silent fall-back to defaults that may point
elsewhere. The default path may be missing or unreadable (most tools cannot read it): then the
defaults apply. A [server] table that `serve` would refuse is a `TargetError` too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.config.schema import ServerSection

# Without a [server] table: the schema's defaults (a test holds them equal), kept here so that a
# tool with no readable config never imports the schema.
DEFAULT_URL = "http://127.0.0.1:8721"
DEFAULT_HEADER = ("Metadata", "true")
ENV_URL = "PC_TOKEN_BROKER_URL"
ENV_SOCKET = "PC_TOKEN_BROKER_SOCKET"
ENV_HEADER = "PC_TOKEN_BROKER_HEADER"
RESPONSE_LIMIT = 1 << 20  # bytes: a token answer is a few KiB; more is not our broker


class DaemonUnreachable(Exception):
    pass


class TargetError(Exception):
    """The daemon's address cannot be worked out: a bad --url, or a named config unreadable."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Target:
    url: str | None = None
    socket_path: str | None = None
    header: tuple[str, str] = DEFAULT_HEADER

    def __str__(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else str(self.url)


def normalise_url(text: str, origin: str = "--url") -> Target:
    """`http://h:p`, `https://h:p`, `h:p` (http assumed) or `unix:/path`."""
    text = text.strip()
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise TargetError(f"{origin}: a unix socket path must be absolute: {text!r}")
        return Target(None, text[5:])
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)  # .port raises on a bad one
    except ValueError as e:
        raise TargetError(f"{origin}: not a URL ({e}): {text!r}") from None
    if not ok:
        raise TargetError(
            f"{origin}: expected http://HOST:PORT, HOST:PORT or unix:/PATH, not {text!r}"
        )
    if parts.query or parts.fragment:
        raise TargetError(f"{origin}: a base URL has no query or fragment: {text!r}")
    return Target(text.rstrip("/"))


def _header(text: Any, origin: str) -> tuple[str, str]:
    name, sep, value = str(text).partition(":")
    if not sep or not name.strip() or not value.strip():
        raise TargetError(f"{origin}: must look like 'Name: value'")
    return name.strip(), value.strip()


def _read_server(config_path: str, explicit: bool) -> ServerSection | None:
    """The config's [server] table, checked; None when there is none or the default path
    cannot be read."""
    from broker.config.files import CONFIG_LIMIT, read_bounded

    try:
        text = read_bounded(config_path, CONFIG_LIMIT).decode("utf-8")
        data = tomllib.loads(text)
    except OSError as e:
        if not explicit:
            return None
        raise TargetError(f"{config_path}: cannot read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        # A syntax error in the default file is the operator's, and it matters: say so too.
        raise TargetError(f"{config_path}: not valid TOML: {e}") from None
    except RecursionError:  # a few KB of "[[[..." exhausts tomllib's stack
        raise TargetError(f"{config_path}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # larger than CONFIG_LIMIT, or not a regular file (a FIFO, a device)
        raise TargetError(f"{config_path}: cannot read: {e}") from None
    if "server" not in data:
        return None
    from broker.config.errors import ConfigError
    from broker.config.server_table import server_section

    try:
        return server_section(data["server"], text, config_path)
    except ConfigError as e:
        raise TargetError("; ".join(str(p) for p in e.problems)) from None


def target_from(
    url: str | None,
    socket_path: str | None,
    config_path: str,
    *,
    explicit: bool = True,
    env: Mapping[str, str] | None = None,
) -> Target:
    """Where the daemon is and which header it wants (see the module docstring)."""
    env = os.environ if env is None else env
    server = _read_server(config_path, explicit)
    header = DEFAULT_HEADER
    if env.get(ENV_HEADER):
        header = _header(env[ENV_HEADER], f"${ENV_HEADER}")
    elif server is not None:
        header = server.header()
    if socket_path:
        return Target(None, socket_path, header)
    if url:
        return _with_header(normalise_url(url), header)
    if env.get(ENV_SOCKET):
        return Target(None, env[ENV_SOCKET], header)
    if env.get(ENV_URL):
        return _with_header(normalise_url(env[ENV_URL], f"${ENV_URL}"), header)
    if server is None:
        return Target(DEFAULT_URL, None, header)
    first = server.listeners()[0]
    if first.kind == "unix":
        return Target(None, first.path, header)
    # A wildcard listener is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(first.host, first.host)
    host = f"[{host}]" if ":" in host else host
    return _with_header(normalise_url(f"{host}:{first.port}", "server.listen"), header)


def _with_header(target: Target, header: tuple[str, str]) -> Target:
    return Target(target.url, target.socket_path, header)


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
        # `timeout` bounds the whole exchange, not each read: a listener dripping a byte at a
        # time would otherwise hold the command (a Tab, a container probe) for hours.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            answer = response.status, response.read(RESPONSE_LIMIT)
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError("timed out") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():  # the body may have been cut short by the shutdown
            raise TimeoutError("timed out")
        return answer
    except (OSError, http.client.HTTPException) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DaemonUnreachable(f"cannot reach the broker at {target}: {reason}") from None


def support_ids(error: dict[str, Any]) -> list[str]:
    """What Microsoft support asks for: the AADSTS code, the correlation and trace ids."""
    ids = []
    if error.get("aadsts"):
        code = str(error["aadsts"])
        ids.append(code if code.upper().startswith("AADSTS") else f"AADSTS{code}")
    if error.get("correlation_id"):
        ids.append(f"correlation id {error['correlation_id']}")
    if error.get("trace_id"):
        ids.append(f"trace id {error['trace_id']}")
    return ids


def error_message(status: int, body: bytes) -> str:
    """The broker's JSON error as one line, with what Microsoft support asks for when present."""
    try:
        error: Any = json.loads(body)["error"]
        text = f"{error['code']}: {error['message']}"
        extras = []
        if error.get("upstream_status"):
            extras.append(f"upstream status {error['upstream_status']}")
        extras += support_ids(error)
        if extras:
            text += f" ({', '.join(extras)})"
        return " ".join(f"HTTP {status}: {text}".split())  # one line, whatever came in
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"HTTP {status}"
