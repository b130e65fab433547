"""Bound sockets for the configured listeners: TCP (IPv4, IPv6) and unix sockets.

The daemon binds the sockets itself and hands them to aiohttp, so it controls the unix
socket's mode and the replacement of a stale socket file left by a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from broker.config.listen import Listen


class ListenError(Exception):
    """A listener that cannot be bound; the message says which and why."""


def _replace_stale_socket(path: str) -> None:
    """Remove `path` only if it is a socket nobody answers on (a crash leftover).

    Anything else at that path (a file, a live broker) is left alone and reported.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"unix:{path}: exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"unix:{path}: cannot probe: {e.strerror}") from None
        os.unlink(path)  # stale: nobody listens
        return
    finally:
        probe.close()
    raise ListenError(f"unix:{path}: another process is listening on it")


def bind(
    listen: Listen, *, socket_mode: int = 0o660, socket_group: int | None = None
) -> socket.socket:
    """A bound, listening-ready socket for one entry."""
    if listen.kind == "unix":
        _replace_stale_socket(listen.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Create it with no permissions for others from the first instant, then set the mode.
        old = os.umask(0o777 & ~socket_mode | 0o007)
        try:
            sock.bind(listen.path)
        except OSError as e:
            sock.close()
            raise ListenError(f"{listen}: {e.strerror}") from None
        finally:
            os.umask(old)
        try:
            if socket_group is not None:
                os.chown(listen.path, -1, socket_group)
            os.chmod(listen.path, socket_mode & ~0o007)  # never world-accessible
        except OSError as e:
            sock.close()
            raise ListenError(f"{listen}: cannot set group or mode: {e.strerror}") from None
        return sock
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as e:
        sock.close()
        raise ListenError(f"{listen}: {e.strerror}") from None
    return sock


def socket_file(sock: socket.socket) -> tuple[str, int, int, int] | None:
    """A unix socket's file as (path, device, inode, ctime), to remove at shutdown only if it
    is still the one this process bound (not one a successor has bound since: an inode
    number is soon reused, so the change time is compared too)."""
    if sock.family != socket.AF_UNIX:
        return None
    path = sock.getsockname()
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    st = os.lstat(path)
    return path, st.st_dev, st.st_ino, st.st_ctime_ns


def remove_socket_file(identity: tuple[str, int, int, int]) -> None:
    """Unlink a socket file this process created, at clean shutdown. Never anything else."""
    path, *mark = identity
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and [st.st_dev, st.st_ino, st.st_ctime_ns] == mark:
            os.unlink(path)


def bound_address(sock: socket.socket) -> str:
    """Where a bound socket listens, as a listen string (the real port when 0 was asked)."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
