"""systemd glue, without libsystemd: readiness and status notifications, the watchdog, and
listening sockets passed by socket activation.

The watchdog is pinged by a timer on the event loop itself, never from a thread: if the loop
stalls, the pings stop and systemd restarts the service, which is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

SD_LISTEN_FDS_START = 3


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET; does nothing when not run by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        self._sock: socket.socket | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: Any) -> None:
        """send(READY=1, STATUS="...") → "READY=1\\nSTATUS=..." to the notify socket."""
        if self._address is None:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
        except OSError:
            pass  # systemd went away or never listened: nothing to tell

    def start_watchdog(self, status: Callable[[], str]) -> None:
        """Ping WATCHDOG=1 (with a fresh STATUS) at half the interval systemd asked for."""
        if self.watchdog_interval is None or self._address is None:
            return
        loop = asyncio.get_running_loop()
        period = self.watchdog_interval / 2

        def ping() -> None:
            self.send(WATCHDOG=1, STATUS=status())
            self._watchdog = loop.call_later(period, ping)

        ping()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000


def listen_fds(
    env: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[socket.socket]:
    """Sockets passed by socket activation ($LISTEN_FDS for this $LISTEN_PID), or none.
    The variables are removed so that nothing started later inherits them."""
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not count.isdigit() or (pid and pid != str(os.getpid())):
        return []
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        with contextlib.suppress(OSError):
            sock.setblocking(False)
        sockets.append(sock)
    return sockets
