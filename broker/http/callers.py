"""Who is asking, and may they have this profile's tokens.

Unix-socket callers are known by what the kernel recorded when they called `connect()`:
SO_PEERCRED (pid, uid, gid) and SO_PEERGROUPS (the supplementary groups; Linux >= 4.13). Both
are read once, when the connection is made, and never again: nothing a process does later (and
no process that later gets the same pid) changes who the connection belongs to. `/proc` is
never consulted. TCP callers are known only by their address. A profile may require a uid or
group (unix socket only) and/or an access key sent as `X-Broker-Key` (compared in constant
time). Both, when set, must hold.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from aiohttp import web
from multidict import istr

from broker.config.settings import ProfileSettings

ACCESS_KEY_HEADER = istr("X-Broker-Key")  # istr: looked up without folding its case again
_PEERCRED = struct.Struct("3i")
# Not in every Python's socket module; 59 on Linux (asm-generic/socket.h).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GID_SIZE = 4  # gid_t
# Groups read at first, and at most: CPython's getsockopt() reads at most 1,024 bytes. A caller in
# more than 256 supplementary groups (NGROUPS_MAX is 65,536) is known by its uid and primary
# group only: a group restriction fails closed.
_GROUPS_FIRST, _GROUPS_MAX = 64, 1024 // _GID_SIZE


@dataclass(frozen=True)
class Caller:
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    address: str = ""
    # The primary and supplementary groups at connect(); empty for TCP callers.
    groups: frozenset[int] = field(default=frozenset())

    @property
    def is_local_user(self) -> bool:
        return self.uid is not None

    @cached_property
    def description(self) -> str:
        """For the audit line, written per token served: built once per connection."""
        if self.uid is not None:
            return f"uid={self.uid} gid={self.gid} pid={self.pid}"
        return self.address or "unknown"

    @cached_property
    def requester(self) -> Requester:
        """This caller on /v1 without an access key, as most ask: made once per connection."""
        return Requester(self, None, self.description)

    @cached_property
    def sdk(self) -> SdkCaller:
        """This caller on /msi: made once per connection."""
        return SdkCaller(self, self.description)


class Requester(NamedTuple):  # a tuple: a third of the cost of a frozen dataclass to make
    """A /v1 caller, as `broker.core.serve` checks it after every wait: the peer the kernel
    recorded (or the address), the access key it presented, the route it asked through."""

    peer: Caller
    key: str | None  # the X-Broker-Key sent, if any
    description: str  # the peer's, for the audit line
    route: str = "v1"

    def may_use(self, profile: ProfileSettings) -> bool:
        return not restricted(profile) or may_use(profile, self.peer, self.key)


class SdkCaller(NamedTuple):
    """A managed-identity caller: it cannot present a uid or a key, so it gets only
    unrestricted profiles."""

    peer: Caller
    description: str  # the peer's, for the audit line
    route: str = "msi"

    def may_use(self, profile: ProfileSettings) -> bool:
        return not restricted(profile)


def read_peer_credentials(transport: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a unix-socket peer, from SO_PEERCRED; None for TCP."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def read_peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary groups the peer had at connect(), from SO_PEERGROUPS. Empty on a
    kernel without it, or past _GROUPS_MAX groups (then only the primary group counts: a
    restriction fails closed)."""
    size = _GROUPS_FIRST
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * _GID_SIZE)
        except OSError as e:
            if e.errno == errno.ERANGE and size < _GROUPS_MAX:
                size = _GROUPS_MAX  # the kernel says the buffer is too small
                continue
            return frozenset()
        count = len(raw) // _GID_SIZE
        return frozenset(struct.unpack(f"{count}I", raw[: count * _GID_SIZE]))


def caller_of(transport: Any) -> Caller:
    """Who is on the other end of `transport`. Call it when the connection is made."""
    peer = read_peer_credentials(transport)
    if peer is not None:
        pid, uid, gid = peer
        groups = read_peer_groups(transport.get_extra_info("socket")) | {gid}
        return Caller(pid=pid, uid=uid, gid=gid, groups=groups)
    address = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return Caller(address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return Caller()


def identify(request: web.BaseRequest) -> Caller:
    """Who sent `request`: known once per connection by its gate (the transport's protocol,
    see `broker.http.protocol`), else worked out from the transport now. Handlers ask before
    their first await: a request whose caller hung up no longer leads to its connection (it
    is then an unknown caller, whom no uid or group rule admits)."""
    transport = request.transport
    if transport is None:
        return Caller()
    peer = getattr(transport.get_protocol(), "peer", None)
    return peer if peer is not None else caller_of(transport)


def restricted(profile: ProfileSettings) -> bool:
    return bool(profile.allowed_uids or profile.allowed_gids or profile.access_key)


def may_use(profile: ProfileSettings, caller: Caller, key: str | None) -> bool:
    """Whether `caller` (presenting access key `key`) may have `profile`'s tokens."""
    if profile.access_key is not None and not profile.access_key.matches(key or ""):
        return False
    if profile.allowed_uids or profile.allowed_gids:
        if not caller.is_local_user:
            return False  # uid and group rules need a unix-socket caller
        if caller.uid in profile.allowed_uids:
            return True
        return bool(profile.allowed_gids and caller.groups & set(profile.allowed_gids))
    return True
