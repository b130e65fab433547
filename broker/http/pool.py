"""Who may hold the broker's connections, so that no local caller can lock the others out.

Every open connection is in the pool, with its peer (a uid on the unix socket, a source address
over TCP) and, while it waits between requests, the time it went idle. When a new one arrives:

1. its peer already holds `max_connections_per_peer`: that peer's oldest idle connection is
   closed to make room, or, when none of them is idle, the new one is refused;
2. it is TCP and TCP already holds all it may (`max_connections` less the unix socket's share,
   `unix_reserved_connections`): the oldest idle TCP connection is closed, else it is refused;
3. the broker holds `max_connections`: the oldest idle connection of any peer is closed, else
   it is refused.

So an idle keep-alive connection never keeps out a caller who has a request to make, one peer
never holds more than its share, and TCP (where any local process can connect, from any
127.0.0.0/8 source address) can never take the unix socket's share. The limits are read at
each use: a reload applies them to the next connection.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from broker.config.settings import ServerSettings

C = TypeVar("C")  # a connection: anything hashable the caller can close


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    per_peer: int
    unix_reserved: int


def limits_of(s: ServerSettings) -> Limits:
    """The limits `s` sets. The unix socket's share: only where there is one, and never more
    than a quarter of the connections."""
    unix = any(listen.kind == "unix" for listen in s.listen)
    reserved = min(s.unix_reserved_connections, s.max_connections // 4) if unix else 0
    per_peer = s.max_connections_per_peer or s.max_connections
    return Limits(s.max_connections, per_peer, reserved)


@dataclass(frozen=True, slots=True)
class Peer:
    key: str  # "uid:1000" on the unix socket, "tcp:127.0.0.1" over TCP
    unix: bool


class Pool(Generic[C]):
    def __init__(self, limits: Callable[[], Limits], close: Callable[[C], None]) -> None:
        self._limits = limits
        self._close = close  # closes an idle connection (which then leaves through `remove`)
        self._peer: dict[C, Peer] = {}
        self._by_peer: Counter[str] = Counter()
        self._tcp = 0
        self._idle: OrderedDict[C, None] = OrderedDict()  # oldest idle first

    def __len__(self) -> int:
        return len(self._peer)

    @property
    def idle_count(self) -> int:
        """Connections waiting between requests (or connected and silent so far)."""
        return len(self._idle)

    def admit(self, conn: C, peer: Peer) -> str | None:
        """Count `conn` in, closing idle connections to make room; or the reason it may not
        come in (`peer_limit`, `tcp_limit`, `too_many_connections`), and it is not counted."""
        limits = self._limits()
        if self._by_peer[peer.key] >= limits.per_peer and not self._evict(
            lambda p: p.key == peer.key
        ):
            return "peer_limit"
        tcp_cap = max(1, limits.max_connections - limits.unix_reserved)
        if not peer.unix and self._tcp >= tcp_cap and not self._evict(lambda p: not p.unix):
            return "tcp_limit"
        if len(self._peer) >= limits.max_connections and not self._evict(lambda p: True):
            return "too_many_connections"
        self._peer[conn] = peer
        self._by_peer[peer.key] += 1
        self._tcp += not peer.unix
        self._idle[conn] = None  # connected, nothing asked yet: idle until its first byte
        return None

    def busy(self, conn: C) -> None:
        """A request has begun on `conn`: it is not idle."""
        self._idle.pop(conn, None)

    def idle(self, conn: C) -> None:
        """`conn` answered and waits for its next request: the newest idle connection."""
        if conn in self._peer:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def remove(self, conn: C) -> None:
        """`conn` closed."""
        peer = self._peer.pop(conn, None)
        if peer is None:
            return
        self._idle.pop(conn, None)
        self._by_peer[peer.key] -= 1
        if not self._by_peer[peer.key]:
            del self._by_peer[peer.key]
        self._tcp -= not peer.unix

    def _evict(self, whose: Callable[[Peer], bool]) -> bool:
        """Close the oldest idle connection whose peer matches; False when there is none."""
        for conn in self._idle:
            if whose(self._peer[conn]):
                self.remove(conn)
                self._close(conn)
                return True
        return False
