"""The daemon: start-up → serve until a signal → shutdown. Read top to bottom.

Signals:
  SIGTERM, SIGINT  stop accepting, let in-flight requests finish (bounded), exit 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .app import create_app
from .config import Settings
from .listeners import ListenError, bind, bound_address
from .logs import bridge_stdlib, make_logger
from .redact import Redactor

SHUTDOWN_GRACE = 10.0  # s in-flight requests get after SIGTERM before they are cut


async def serve(
    settings: Settings,
    *,
    log: Any = None,
    redactor: Redactor | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run until `stop` is set (by SIGTERM/SIGINT when not given). Returns the exit code."""
    redactor = redactor or Redactor()
    log = log or make_logger(
        fmt=settings.server.log_format, level=settings.server.log_level, redactor=redactor
    )
    bridge_stdlib(log)
    loop = asyncio.get_running_loop()

    # -- start-up: bind every listener first, so a bad one fails before anything else runs.
    sockets: list[socket.socket] = []
    try:
        for listen in settings.server.listen:
            sockets.append(bind(listen))
    except ListenError as e:
        for sock in sockets:
            sock.close()
        log.error("listen_failed", error=str(e))
        return 1
    app = create_app(settings, log=log, redactor=redactor)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    addresses = [bound_address(s) for s in sockets]
    log.info("listening", addresses=addresses)
    if on_ready is not None:
        on_ready(addresses)

    # -- main loop: wait for a signal.
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # -- shutdown: sites stop accepting, in-flight requests finish, then the cache closes.
    log.info("stopping")
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
