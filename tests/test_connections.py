"""No local caller can lock the others out: the broker's connections by peer, idle ones first.

The attack this pins: an unprivileged process held 300 idle keep-alive TCP connections and
reopened them every 9 s; with one pool of `max_connections` shared by TCP and the unix socket,
and idle connections never closed, a unix-socket caller got 429 in 26 tries of 27. A real
server on a loopback port and a unix socket, real sockets, no sleeping in hope."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from broker.config.listen import Listen
from broker.daemon.listeners import bind, bound_address
from broker.http.app import create_app
from broker.http.server import HttpServer
from tests.conftest import HEADERS, make_settings
from tests.support import raw, status_and_json, until


async def serve_both(sandbox, secret, tmp_path: Path, server: str):
    """The broker on a loopback port and a unix socket, as the daemon serves them."""
    path = tmp_path / "b.sock"
    settings = make_settings(sandbox, secret, listen=f'"127.0.0.1:0", "unix:{path}"', server=server)
    http = HttpServer(create_app(settings))
    tcp = bind(Listen.tcp("127.0.0.1", 0))
    await http.start([tcp, bind(Listen.unix(str(path)))])
    return http, bound_address(tcp), path


async def open_idle(
    address: str, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` keep-alive connections, each after one answered request: idle, held open."""
    host, port = address.rsplit(":", 1)
    held = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b'"ok"}')  # the answer: the connection now waits, idle
        held.append((reader, writer))
    return held


async def unix_get(path: Path, url: str) -> int:
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url, headers=HEADERS) as r:
        await r.read()
        return r.status


async def test_an_idle_tcp_flood_never_locks_out_a_unix_caller(sandbox, secret, tmp_path):
    """One process fills every connection with idle keep-alive TCP connections, reopening
    them between rounds; a unix-socket caller is served every time."""
    http, address, path = await serve_both(
        sandbox, secret, tmp_path, "max_connections = 12\nmax_connections_per_peer = 100"
    )
    held: list = []
    try:
        statuses = []
        for _ in range(5):
            held += await open_idle(address, 12)  # more than TCP may hold: oldest idle go
            statuses.append(await unix_get(path, "http://localhost/v1/token"))
        assert statuses == [200] * 5
        assert len(http.gates.pool) <= 12
    finally:
        for _, writer in held:
            writer.close()
        await http.close()


async def test_idle_connections_make_room_oldest_first(sandbox, secret, tmp_path):
    """At the cap, a newcomer is let in and the connection idle longest is the one closed."""
    http, address, _ = await serve_both(
        sandbox, secret, tmp_path, "max_connections = 4\nunix_reserved_connections = 0"
    )
    try:
        held = await open_idle(address, 4)
        newcomer = await open_idle(address, 1)  # admitted: the oldest idle made room
        oldest_reader = held[0][0]
        assert await asyncio.wait_for(oldest_reader.read(), 5) == b""  # closed by the broker
        assert all(not reader.at_eof() for reader, _ in held[1:])
        for _, writer in held + newcomer:
            writer.close()
    finally:
        await http.close()


async def test_one_tcp_peer_holds_at_most_its_share(sandbox, secret, tmp_path):
    """A peer at max_connections_per_peer with every connection mid-request (none idle) is
    refused a further one with 429, while another source address still gets in."""
    http, address, _ = await serve_both(
        sandbox, secret, tmp_path, "max_connections_per_peer = 3\nunix_reserved_connections = 0"
    )
    host, port = address.rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    try:
        for _, writer in held:  # a head begun and never finished: busy, not idle
            writer.write(b"GET /v1/token HTTP/1.1\r\n")
            await writer.drain()
        pool = http.gates.pool
        await until(lambda: len(pool) == 3 and pool.idle_count == 0, what="three busy")
        status, body = status_and_json(await raw(address, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert status == 429 and body["error"]["code"] == "too_many_connections"
        assert "share" in body["error"]["message"]
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.2", 0))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
        await http.close()


async def test_tcp_callers_never_take_the_unix_sockets_share(sandbox, secret, tmp_path):
    """Every TCP connection TCP may hold is mid-request (nothing idle to close): a further TCP
    connection gets 429, and a unix-socket caller still gets in, on the share kept for it."""
    http, address, path = await serve_both(
        sandbox,
        secret,
        tmp_path,
        "max_connections = 8\nmax_connections_per_peer = 100\nunix_reserved_connections = 2",
    )
    host, port = address.rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(6)]  # 8 - 2
    try:
        for _, writer in held:
            writer.write(b"GET /v1/token HTTP/1.1\r\n")
            await writer.drain()
        pool = http.gates.pool
        await until(lambda: len(pool) == 6 and pool.idle_count == 0, what="six busy")
        status, body = status_and_json(await raw(address, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert status == 429 and "TCP" in body["error"]["message"]
        assert await unix_get(path, "http://localhost/v1/token") == 200
    finally:
        for _, writer in held:
            writer.close()
        await http.close()
