"""The daemon: start-up → serve until a signal → shutdown. Read top to bottom.

Signals:
  SIGTERM, SIGINT  stop accepting, let in-flight requests finish (at most shutdown_timeout),
                   close the cache, exit 0.
  SIGHUP           reload the config file: a valid one is applied atomically (new profiles
                   appear, removed ones go, changed ones refresh); a broken one is refused with
                   one log line and the running config is kept.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, TextIO

from broker import __version__
from broker.config.load import ConfigError, load_settings
from broker.config.settings import Settings
from broker.core.service import Broker
from broker.daemon.listeners import (
    ListenError,
    bind,
    bound_address,
    remove_socket_file,
    socket_file,
)
from broker.daemon.systemd import Notifier, listen_fds
from broker.http.app import BROKER, create_app
from broker.http.server import HttpServer
from broker.observe.logs import bridge_stdlib, make_logger
from broker.observe.redact import Redactor


def _bind_all(settings: Settings, log: Any) -> tuple[list[socket.socket], bool]:
    """Sockets from systemd (socket activation) if it passed any, else the configured ones;
    and whether they are systemd's."""
    passed = listen_fds()
    if passed:
        log.info(
            "socket_activation",
            sockets=len(passed),
            note="server.listen is not used while systemd passes the sockets",
        )
        return passed, True
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
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, False


def _banner(
    log: Any,
    settings: Settings,
    broker: Broker,
    config_path: str | None,
    addresses: list[str],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The start-up line an operator reads first (as Vault Agent prints one): what runs, from
    which file, where it listens and which endpoint families are on."""
    server = settings.server
    log.info(
        "listening",
        version=__version__,
        config=config_path,
        addresses=addresses,
        profiles=sorted(settings.profiles),
        mirror="on" if settings.mirror.enabled else "off",
        msi=f"on (profile {settings.msi.profile})" if settings.msi else "off",
        audit="on" if server.audit else "off",
        event_loop=type(loop).__module__.split(".")[0],
        upstream_proxy=broker.upstream.proxies.describe() if broker.upstream else "none",
        log_level=server.log_level,
    )


async def _reload(path: str | None, broker: Broker, log: Any, notifier: Notifier) -> None:
    notifier.send(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1_000_000))
    try:
        if path is None:
            raise ConfigError([])
        # Read and validated in a worker thread: files (the config, secrets) are never read on
        # the event loop, which keeps serving meanwhile.
        new = await asyncio.to_thread(load_settings, path)
        changes = broker.apply(new)
    except ConfigError as e:
        problems = "; ".join(str(p) for p in e.problems) or "no config file to reload"
        log.error(
            "reload_refused",
            config=path,
            problems=problems,
            note="the running configuration is kept",
        )
    except Exception as e:  # a credential that cannot be built: keep the old config too
        log.error(
            "reload_refused",
            config=path,
            problems=f"{type(e).__name__}: {e}",
            note="the running configuration is kept",
        )
    else:
        # The new snapshot is in force; the settings it cannot apply (declared restart-only in
        # the config schema, broker/config/schema.py) are in needs_restart.
        log.info("reloaded", config=path, **changes)
        if changes["needs_restart"]:
            log.warning(
                "restart_needed",
                config=path,
                settings=changes["needs_restart"],
                note="the process still runs the old values of these; restart to apply them",
            )
    notifier.send(READY=1, STATUS=broker.summary())


async def serve(
    settings: Settings,
    *,
    config_path: str | None = None,
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
    notifier = Notifier()

    # Signals first: a SIGTERM that arrives the instant we are ready must stop us cleanly.
    own_signals = stop is None
    stop = stop or asyncio.Event()
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    # -- start-up: bind every listener first, so a bad one fails before anything else runs.
    try:
        sockets, activated = _bind_all(settings, log)
    except ListenError as e:
        log.error("listen_failed", error=str(e))
        return 1
    # Socket files this process created, removed at clean shutdown (systemd's are its own).
    created = [] if activated else [f for f in map(socket_file, sockets) if f]
    app = create_app(settings, log=log, redactor=redactor, audit_stream=audit_stream)
    broker = app[BROKER]
    server = HttpServer(app)
    await server.start(sockets)
    addresses = [bound_address(s) for s in sockets]
    if own_signals:  # before the banner: a SIGHUP sent on seeing it must reload, not kill
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: loop.create_task(_reload(config_path, broker, log, notifier)),
        )
    _banner(log, settings, broker, config_path, addresses, loop)
    notifier.send(READY=1, STATUS=f"listening on {', '.join(addresses)}; {broker.summary()}")
    notifier.start_watchdog(broker.summary)
    if on_ready is not None:
        on_ready(addresses)

    # -- main loop: wait for a signal.
    await stop.wait()

    # -- shutdown: sites stop accepting, in-flight requests finish (bounded), cache closes.
    log.info("stopping", grace_s=settings.server.shutdown_timeout)
    notifier.send(STOPPING=1, STATUS="stopping")
    started = time.monotonic()
    await server.close()
    for identity in created:
        remove_socket_file(identity)
    notifier.close()
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopped", duration_s=round(time.monotonic() - started, 2))
    return 0
