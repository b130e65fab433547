"""Which settings a reload applies is declared once, with each setting in the config schema
(`restart_needed`): the live ones take effect on the running server at once, the others are
reported until a restart."""

from __future__ import annotations

import asyncio
import dataclasses

from broker.config.reference import RESTART_NAMES
from broker.config.settings import ServerSettings
from tests.conftest import make_settings
from tests.support import raw, request_of_head_size, status_and_json, until


async def all_closed(b) -> None:
    """Until the server has seen every connection so far close (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while b.client.server.gates.open:
        assert loop.time() < deadline, "connections still open"
        await asyncio.sleep(0.01)


def test_every_server_setting_is_declared_live_or_restart_only_in_the_schema() -> None:
    """Each [server] attribute is either restart-only (a name restart_needed can report) or
    live, and the ones the running server reads at each use are live."""
    fields = {f.name for f in dataclasses.fields(ServerSettings)}
    restart_only = fields & set(RESTART_NAMES)
    assert restart_only == {
        "listen", "log_format", "log_level", "allow_remote", "socket_mode", "socket_group",
        "shutdown_timeout", "event_loop", "upstream_proxy", "upstream_proxy_credentials",
    }  # fmt: skip
    live = fields - restart_only
    assert {"max_connections", "read_timeout", "max_header_bytes", "required_header"} <= live
    assert RESTART_NAMES[-1] == "shared"


async def test_a_reload_applies_the_live_limits_to_the_running_server(
    sandbox, secret, start_broker
):
    """max_connections, max_header_bytes and read_timeout lowered by a reload: the very next
    connection, head and slow request are held to the new values, and nothing is reported as
    needing a restart. shutdown_timeout, which the runner took at start, is reported."""
    b = await start_broker(make_settings(sandbox, secret))
    address = str(b.client.make_url("")).removeprefix("http://").rstrip("/")
    assert (await raw(address, request_of_head_size(2000))).startswith(b"HTTP/1.1 200 ")
    live = "max_connections = 2\nmax_header_bytes = 1024\nread_timeout = 0.3"
    changes = b.broker.apply(make_settings(sandbox, secret, server=live))
    assert changes["needs_restart"] == []

    status, body = status_and_json(await raw(address, request_of_head_size(2000)))
    assert status == 431 and body["error"]["code"] == "headers_too_large"
    assert (await raw(address, request_of_head_size(1024))).startswith(b"HTTP/1.1 200 ")

    host, port = address.rsplit(":", 1)
    await all_closed(b)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
    for _, writer in held:  # mid-request, so not idle: nothing to close to make room
        writer.write(b"GET /v1/token HTTP/1.1\r\n")
        await writer.drain()
    pool = b.client.server.gates.pool
    await until(lambda: len(pool) == 2 and pool.idle_count == 0, what="two requests begun")
    status, body = status_and_json(await raw(address, b""))
    assert status == 429 and body["error"]["code"] == "too_many_connections"
    for _, writer in held:
        writer.close()
        await writer.wait_closed()

    await all_closed(b)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\n")  # never finished
    answer = await asyncio.wait_for(reader.read(), 5)  # 408 after 0.3 s, then closed
    writer.close()
    assert status_and_json(answer)[1]["error"]["code"] == "request_timeout"

    later = make_settings(sandbox, secret, server=live + "\nshutdown_timeout = 3")
    assert b.broker.apply(later)["needs_restart"] == ["shutdown_timeout"]
    profiles = await (await b.get("/v1/profiles")).json()
    assert profiles["restart_pending"] == ["shutdown_timeout"]
    metrics = await (await b.client.get("/metrics")).text()
    assert 'broker_restart_pending{setting="shutdown_timeout"} 1.0' in metrics
