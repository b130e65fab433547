"""The connection pool's rules, on their own: idle connections go first, oldest idle first; no
peer holds more than its share; TCP never takes the unix socket's share."""

from __future__ import annotations

from broker.http.pool import Limits, Peer, Pool

ATTACKER, OTHER = Peer("tcp:127.0.0.1", unix=False), Peer("tcp:127.0.0.2", unix=False)
USER = Peer("uid:1000", unix=True)


def make(max_connections: int = 10, per_peer: int = 4, unix_reserved: int = 2):
    closed: list[str] = []
    limits = Limits(max_connections, per_peer, unix_reserved)
    return Pool(lambda: limits, closed.append), closed


def test_a_peer_at_its_share_loses_its_oldest_idle_connection_then_is_refused() -> None:
    pool, closed = make(per_peer=3)
    for name in ("a1", "a2", "a3"):
        assert pool.admit(name, ATTACKER) is None
    pool.busy("a1")
    assert pool.admit("a4", ATTACKER) is None and closed == ["a2"]  # a1 is busy: a2 goes
    for name in ("a3", "a4"):
        pool.busy(name)
    assert pool.admit("a5", ATTACKER) == "peer_limit" and len(pool) == 3
    assert pool.admit("o1", OTHER) is None  # another peer is not held to the attacker's count


def test_idle_connections_go_first_oldest_idle_first_at_the_cap() -> None:
    pool, closed = make(max_connections=4, per_peer=4, unix_reserved=0)
    for name in ("c1", "c2", "c3", "c4"):
        assert pool.admit(name, OTHER if name == "c1" else ATTACKER) is None
        pool.busy(name)
    pool.idle("c3")  # c3 answered first, then c1
    pool.idle("c1")
    assert pool.admit("n1", USER) is None and closed == ["c3"]
    assert pool.admit("n2", USER) is None and closed == ["c3", "c1"]
    pool.busy("n1")
    pool.busy("n2")
    assert pool.admit("n3", USER) == "too_many_connections"  # nobody idle: refused


def test_tcp_never_takes_the_unix_sockets_share() -> None:
    pool, closed = make(max_connections=6, per_peer=6, unix_reserved=2)
    for i in range(4):
        assert pool.admit(f"t{i}", ATTACKER) is None
        pool.busy(f"t{i}")
    assert pool.admit("t4", OTHER) == "tcp_limit"  # 6 - 2 held for the unix socket
    assert pool.admit("u1", USER) is None and pool.admit("u2", USER) is None
    assert closed == []


def test_an_idle_flood_over_tcp_never_locks_out_a_unix_caller() -> None:
    """The attack, in the pool's terms: one process holds every TCP slot with idle keep-alive
    connections and keeps reopening them; a unix caller always gets in."""
    pool, closed = make(max_connections=8, per_peer=8, unix_reserved=2)
    for round_ in range(5):
        for i in range(10):
            pool.admit(f"r{round_}-{i}", ATTACKER)  # refused past the TCP share, or idle
        assert pool.admit(f"u{round_}", USER) is None
        pool.remove(f"u{round_}")
    assert len(pool) <= 6  # the attacker's idle connections made room for its own new ones
    assert closed and all(name.startswith("r") for name in closed)


def test_a_closed_connection_leaves_every_count() -> None:
    pool, closed = make(max_connections=2, per_peer=1, unix_reserved=0)
    assert pool.admit("a", ATTACKER) is None
    pool.busy("a")
    assert pool.admit("b", ATTACKER) == "peer_limit"
    pool.remove("a")
    pool.remove("a")  # twice: harmless
    assert pool.admit("b", ATTACKER) is None and len(pool) == 1
    pool.idle("gone")  # a connection the pool never admitted: ignored
    assert len(pool) == 1 and closed == []
