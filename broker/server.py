"""The daemon: start-up → serve until a signal → shutdown. Read top to bottom.

Signals:
  SIGTERM, SIGINT  stop accepting, let in-flight requests finish (bounded), exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any, TextIO

from aiohttp import web

from .app import BROKER, create_app
from .config import Settings
from .listeners import ListenError, bind, bound_address
from .logs import bridge_stdlib, make_logger
from .protocol import GuardedAppRunner, Limits
from .redact import Redactor

SHUTDOWN_GRACE = 10.0  # s in-flight requests get after SIGTERM before they are cut
KEEPALIVE = 15.0  # s an idle keep-alive connection stays open


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """aiohttp's runner with the broker's connection limits and no access log (the audit line
    replaces it; aiohttp's costs half the throughput)."""
    server = settings.server
    metrics = app[BROKER].metrics
    limits = Limits(
        read_timeout=server.read_timeout,
        max_connections=server.max_connections,
        max_head_bytes=server.max_header_bytes,
        on_reject=lambda reason: metrics.rejected.labels(reason).inc(),
    )
    line = max(8190, server.max_header_bytes)
    return GuardedAppRunner(
        app,
        limits=limits,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_GRACE,
        keepalive_timeout=KEEPALIVE,
        max_line_size=line,
        max_field_size=line,
        max_headers=100,
        lingering_time=server.read_timeout,  # an unread body is drained no longer than a head
    )


async def serve(
    settings: Settings,
    *,
    log: Any = None,
    redactor: Redactor | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
    audit_stream: TextIO | None = None,
) -> int:
    """Run until `stop` is set (by SIGTERM/SIGINT when not given). Returns the exit code."""
    redactor = redactor or Redactor()
    log = log or make_logger(
        fmt=settings.server.log_format, level=settings.server.log_level, redactor=redactor
    )
    bridge_stdlib(log)
    loop = asyncio.get_running_loop()

    # Signals first: a SIGTERM that arrives the instant we are ready must stop us cleanly.
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    # -- start-up: bind every listener first, so a bad one fails before anything else runs.
    sockets: list[socket.socket] = []
    try:
        for listen in settings.server.listen:
            sockets.append(
                bind(
                    listen,
                    socket_mode=settings.server.socket_mode,
                    socket_group=settings.server.socket_group,
                )
            )
            if not listen.is_loopback:
                log.warning(
                    "listening_remote",
                    address=str(listen),
                    note="server.allow_remote is on: other hosts can ask for tokens",
                )
    except ListenError as e:
        for sock in sockets:
            sock.close()
        log.error("listen_failed", error=str(e))
        return 1
    app = create_app(settings, log=log, redactor=redactor, audit_stream=audit_stream)
    runner = make_runner(app, settings)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    addresses = [bound_address(s) for s in sockets]
    log.info("listening", addresses=addresses)
    if on_ready is not None:
        on_ready(addresses)

    # -- main loop: wait for a signal.
    await stop.wait()

    # -- shutdown: sites stop accepting, in-flight requests finish, then the cache closes.
    log.info("stopping")
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
