"""Who is asking, and may they have this profile's tokens.

Unix-socket callers are known by their peer credentials (SO_PEERCRED: pid, uid, gid, plus the
supplementary groups read from /proc when visible); TCP callers only by their address. A profile
may require a uid or group (unix socket only) and/or an access key sent as `X-Broker-Key`
(compared in constant time). Both, when set, must hold.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.config.settings import ProfileSettings

ACCESS_KEY_HEADER = "X-Broker-Key"
_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Caller:
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    address: str = ""

    @property
    def is_local_user(self) -> bool:
        return self.uid is not None

    @cached_property
    def description(self) -> str:
        """For the audit line, written per token served: built once per connection."""
        if self.uid is not None:
            return f"uid={self.uid} gid={self.gid} pid={self.pid}"
        return self.address or "unknown"

    def groups(self) -> set[int]:
        """The primary and supplementary groups. The supplementary ones come from /proc and
        may be invisible (hidepid, systemd's ProtectProc): then only the primary counts."""
        groups = {self.gid} if self.gid is not None else set()
        if self.pid:
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("Groups:"):
                        groups.update(int(g) for g in line.split()[1:])
                        break
            except (OSError, ValueError):
                pass
        return groups


def read_peer_credentials(transport: Any) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a unix-socket peer, from SO_PEERCRED; None for TCP."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def caller_of(transport: Any) -> Caller:
    peer = read_peer_credentials(transport)
    if peer is not None:
        pid, uid, gid = peer
        return Caller(pid=pid, uid=uid, gid=gid)
    address = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return Caller(address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return Caller()


def identify(request: web.BaseRequest) -> Caller:
    cached = getattr(request.protocol, "caller", None)  # the broker's handler: per connection
    return cached() if cached is not None else caller_of(request.transport)


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
        return bool(profile.allowed_gids and caller.groups() & set(profile.allowed_gids))
    return True
