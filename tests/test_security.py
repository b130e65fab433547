"""Local security, tested by attacking each defence against the real server runner."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from broker.config.errors import ConfigError
from tests.conftest import HEADERS, make_settings
from tests.support import mirror_head, raw, status_and_json, until


async def metric(address: str, reason: str) -> float:
    host, port = address.rsplit(":", 1)
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f'broker_rejected_requests_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    ("name", "headers", "status", "reason"),
    [
        ("missing header", {}, 400, "required_header"),
        ("foreign Host", {**HEADERS, "Host": "attacker.example"}, 403, "host"),
        ("X-Forwarded-For", {**HEADERS, "X-Forwarded-For": "10.1.1.1"}, 403, "proxy_header"),
        ("Forwarded", {**HEADERS, "Forwarded": "for=10.1.1.1"}, 403, "proxy_header"),
        ("Via", {**HEADERS, "Via": "1.1 squid"}, 403, "proxy_header"),
    ],
)
async def test_ssrf_and_rebinding_guards(
    sandbox, secret, run_server, name, headers, status, reason
):
    """Each guard answers its 4xx JSON, counts it in metrics, and sends no CORS header."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/token", headers=headers) as r:
            body = await r.json()
            assert r.status == status, name
            assert not [h for h in r.headers if h.lower().startswith("access-control")]
    assert body["error"]["code"] and "Traceback" not in json.dumps(body)
    assert await metric(address, reason) == 1


async def test_cors_preflight_is_refused(sandbox, secret, run_server):
    """An OPTIONS preflight gets 403 and no Access-Control-* header, on any path."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/token", "/v1/token/default", "/generatetoken", "/anything"):
            async with s.options(
                f"http://{address}{path}",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
            ) as r:
                assert r.status == 403, path
                assert (await r.json())["error"]["code"] == "preflight_refused"
                assert not [h for h in r.headers if h.lower().startswith("access-control")]
    assert await metric(address, "preflight") == 4


async def test_oversized_body_is_413(sandbox, secret, run_server):
    """A body over 64 KiB on a /v1 route: 413 JSON, counted."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    # Declared, not sent: the broker answers from the headers without reading 65 KiB.
    head = (
        b"POST /v1/token/default/refresh HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n"
        b"Content-Length: 66560\r\nConnection: close\r\n\r\n"
    )
    status, body = status_and_json(await raw(address, head))
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert await metric(address, "body_too_large") == 1


async def test_oversized_headers_are_431_and_long_urls_414(sandbox, secret, run_server):
    """Headers over 8 KiB: 431; a request line over it: 414; both JSON, never echoing input."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    big = b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    status, body = status_and_json(await raw(address, big))
    assert status == 431 and body["error"]["code"] == "headers_too_large"
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150))
    status, body = status_and_json(await raw(address, many + b"\r\n"))
    assert status == 431
    url = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
    answer = await raw(address, url)
    assert status_and_json(answer)[0] == 414 and b"aaaa" not in answer
    assert await metric(address, "headers_too_large") == 2


async def test_slow_client_is_cut_off_with_408(sandbox, secret, run_server):
    """A slowloris client trickling its headers gets a 408 after read_timeout, then the
    connection closes; a well-behaved request on another connection is served meanwhile."""
    (address,), _ = await run_server(make_settings(sandbox, secret, server="read_timeout = 0.5"))
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    answer = asyncio.create_task(reader.read())  # everything until the server closes its side
    writer.write(b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    for _ in range(40):  # the attacker's pace: one header byte every 50 ms, never finishing
        if answer.done():
            break
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)
    answer = await asyncio.wait_for(answer, 5)
    elapsed = time.monotonic() - started
    writer.close()
    status, body = status_and_json(answer)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert elapsed < 2.5
    assert await metric(address, "request_timeout") == 1


async def test_a_pipelined_head_dripped_is_cut_off_too(sandbox, secret, run_server):
    """Guarantee 7 (read times are bounded) for the second head on a connection, sent in the
    same packet as a complete first request and then trickled: it should end like the first
    head's slowloris (408 or close after read_timeout), not hold the connection while it drips."""
    (address,), _ = await run_server(make_settings(sandbox, secret, server="read_timeout = 0.5"))
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    answer = asyncio.create_task(reader.read())
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
    )
    try:
        for _ in range(60):  # 3 s at one byte every 50 ms
            if answer.done():
                break
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)
        assert answer.done(), "the dripping pipelined head still held the connection after 3 s"
    finally:
        writer.close()
        answer.cancel()


async def test_a_pipelined_head_over_budget_is_431_and_the_connection_ends(
    sandbox, secret, run_server
):
    """A head pipelined behind a request and then grown past max_header_bytes (in pieces,
    after the first answer) is 431 like a first head would be, and the connection ends."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    first = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    answer = await exchange(
        address,
        first + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n",
        *(b"X-Pad: " + b"p" * 1000 + b"\r\n" for _ in range(10)),
        pause=0.05,
    )
    assert statuses(answer) == [200, 431], answer[-300:]


async def exchange(address: str, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send `chunks` on one connection (with `pause` between them), then read until the
    broker closes it (at most 10 s)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    answer = asyncio.ensure_future(reader.read())
    try:
        for chunk in chunks:
            if answer.done():
                break
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.wait([answer], timeout=pause)
        return await asyncio.wait_for(answer, 10)
    finally:
        writer.close()


def statuses(answer: bytes) -> list[int]:
    """The status of every answer in `answer` (bodies are JSON: no status line inside)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


async def test_a_stalled_or_dripping_body_is_cut_off_with_408(sandbox, secret, run_server):
    """A body that stalls, or drips a byte every 50 ms, is cut off read_timeout after its head
    began: 408 in Partner Center's shape, connection closed. Two of them at the connection cap
    do not lock other callers out for longer than that."""
    settings = make_settings(sandbox, secret, server="read_timeout = 0.5\nmax_connections = 2")
    (address,), _ = await run_server(settings)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stalled, dripping = await asyncio.gather(
        exchange(address, mirror_head(100) + b'{"grant_type"'),
        exchange(address, mirror_head(100), *[b" "] * 60, pause=0.05),
    )
    elapsed = loop.time() - started
    for answer in (stalled, dripping):
        assert statuses(answer) == [408], answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == 408
    assert elapsed < 2.5
    async with aiohttp.ClientSession() as s, s.get(f"http://{address}/healthz") as r:
        assert r.status == 200


async def test_body_bytes_are_not_head_bytes(sandbox, secret, run_server):
    """A 20 KiB mirror body sent with its head is served (not 431); a 70 KiB one is 413 (not
    431) and nothing follows it (no stray 414 for its unread body); 200 pipelined requests in
    one packet are each answered."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    async with aiohttp.ClientSession() as s:
        url = f"http://{address}/v1/token?kind=aad"
        async with s.get(url, headers={**HEADERS, "Accept": "text/plain"}) as r:
            bearer = await r.text()
    body = json.dumps({"grant_type": "jwt_token"}).encode() + b" " * 20000
    answer = await exchange(address, mirror_head(len(body), bearer, "Connection: close\r\n") + body)
    assert statuses(answer) == [200]
    big = b" " * 70000
    answer = await exchange(
        address, mirror_head(len(big), bearer) + big + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert statuses(answer) == [413]
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * 199
    answer = await exchange(
        address, pipelined + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert statuses(answer) == [200] * 200


async def test_each_head_on_a_kept_alive_connection_is_held_to_the_budget_and_deadline(
    sandbox, secret, run_server
):
    """After a request with a 20 KiB body on a kept-alive connection, the next head is counted
    from its own first byte: one within the budget is served, one over it is 431; and a head
    that then never completes is 408 after read_timeout."""
    (address,), _ = await run_server(make_settings(sandbox, secret, server="read_timeout = 0.5"))
    host, port = address.rsplit(":", 1)
    body = json.dumps({"grant_type": "jwt_token"}).encode() + b" " * 20000
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(mirror_head(len(body)) + body)  # a bearer that is no JWT: upstream's answer
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    await reader.readexactly(length)
    pad = b"X-Pad: " + b"a" * 7000 + b"\r\n"
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + pad + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + pad * 2 + b"\r\n")
    assert statuses(await asyncio.wait_for(reader.read(), 10)) == [431]
    writer.close()

    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1)))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # never finished
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert statuses(answer) == [408]


async def test_connection_cap(sandbox, secret, start_broker):
    """With max_connections = 3 and three connections mid-request (none idle, so none to close
    to make room), a fourth gets 429 and is closed; once they go, a caller gets in again."""
    b = await start_broker(make_settings(sandbox, secret, server="max_connections = 3"))
    address = str(b.client.make_url("")).removeprefix("http://").rstrip("/")
    host, port = address.rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    for _, writer in held:  # each starts a request and never finishes its head
        writer.write(b"GET /v1/token HTTP/1.1\r\n")
        await writer.drain()
    pool = b.client.server.gates.pool
    await until(lambda: len(pool) == 3 and pool.idle_count == 0, what="three requests begun")
    answer = await raw(address, b"")
    status, body = status_and_json(answer)
    assert status == 429 and body["error"]["code"] == "too_many_connections"
    for _, writer in held:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in held))
    await until(lambda: len(pool) == 0, what="the server saw the closes")
    async with aiohttp.ClientSession() as s, s.get(f"http://{address}/healthz") as r:
        assert r.status == 200


async def test_unix_socket_is_never_world_accessible(sandbox, secret, run_server, tmp_path):
    """The socket is created 0660; a stale socket file from a crash is replaced."""
    path = tmp_path / "b.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a crash leftover: the file exists, nobody listens
    await run_server(make_settings(sandbox, secret, listen=f'"unix:{path}"'))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o660 and not mode & 0o007
    with pytest.raises(ConfigError, match="would let any local user in"):
        make_settings(sandbox, secret, listen=f'"unix:{path}"', server='socket_mode = "0666"')


async def test_a_live_socket_is_not_stolen(sandbox, secret, run_server, tmp_path):
    """A second broker on the same socket path refuses to start instead of replacing it."""
    path = tmp_path / "b.sock"
    await run_server(make_settings(sandbox, secret, listen=f'"unix:{path}"'))
    with pytest.raises(RuntimeError, match="another process is listening"):
        await run_server(make_settings(sandbox, secret, listen=f'"unix:{path}"'))


def test_remote_listeners_need_allow_remote(sandbox, secret):
    """0.0.0.0 without allow_remote is a config error; with it, a warning."""
    with pytest.raises(ConfigError, match="is not a loopback address"):
        make_settings(sandbox, secret, listen='"0.0.0.0:8721"')
    allowed = make_settings(sandbox, secret, listen='"0.0.0.0:8721"', server="allow_remote = true")
    assert any("reachable from other hosts" in w for w in allowed.warnings)


async def test_uid_rules_on_the_unix_socket(sandbox, secret, run_server, tmp_path):
    """allowed_uids: our uid is served over the unix socket; another uid's profile is 403 with
    nothing about it; TCP callers of a uid-restricted profile are refused."""
    path = tmp_path / "b.sock"
    uid = os.getuid()
    profiles = f"""[profiles.mine]
allowed_uids = [{uid}]
[profiles.theirs]
allowed_uids = [{uid + 4242}]
[profiles.group]
allowed_gids = [{os.getgid()}]
"""
    addresses, _ = await run_server(
        make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}", "127.0.0.1:0"')
    )
    conn = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=conn) as s:
        for name, expected in (("mine", 200), ("group", 200), ("theirs", 403)):
            async with s.get(f"http://localhost/v1/token/{name}", headers=HEADERS) as r:
                assert r.status == expected, name
                if expected == 403:
                    text = await r.text()
                    assert "theirs" not in text and "state" not in text
        async with s.get("http://localhost/v1/profiles", headers=HEADERS) as r:
            assert set((await r.json())["profiles"]) == {"mine", "group"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{addresses[1]}/v1/token/mine", headers=HEADERS) as r:
            assert r.status == 403
    assert await metric(addresses[1], "not_allowed") == 2


async def test_access_key(sandbox, secret, run_server, tmp_path, witness):
    """A profile with an access key: no key or a wrong one is 403, the right one 200."""
    key = "access-key-" + secret[-12:]
    witness.secrets.add(key)
    (tmp_path / "key").write_text(key)
    profiles = f'[profiles.default]\naccess_key_file = "{tmp_path}/key"\n'
    (address,), _ = await run_server(make_settings(sandbox, secret, profiles=profiles))
    async with aiohttp.ClientSession() as s:
        for sent, expected in ((None, 403), ("wrong-key-value", 403), (key, 200)):
            headers = {**HEADERS, **({"X-Broker-Key": sent} if sent else {})}
            async with s.get(f"http://{address}/v1/token", headers=headers) as r:
                assert r.status == expected, sent


async def test_metrics_and_readyz_refuse_foreign_hosts_and_hide_restricted_profiles(
    sandbox, secret, run_server
):
    """A DNS-rebound page (foreign Host) or a proxied request cannot read /metrics or /readyz;
    an allowed caller's scrape never names a profile restricted to someone else."""
    profiles = f"[profiles.default]\n[profiles.hidden]\nallowed_uids = [{os.getuid() + 4242}]\n"
    (address,), _ = await run_server(make_settings(sandbox, secret, profiles=profiles))
    async with aiohttp.ClientSession() as s:
        for path in ("/metrics", "/readyz"):
            for headers in ({"Host": "rebound.evil.example"}, {"X-Forwarded-For": "10.0.0.1"}):
                async with s.get(f"http://{address}{path}", headers=headers) as r:
                    assert r.status == 403, (path, headers)
        async with s.get(f"http://{address}/metrics") as r:
            metrics = await r.text()
            assert r.status == 200
        async with s.get(f"http://{address}/readyz") as r:
            ready = await r.json()
    assert 'profile="default"' in metrics and 'profile="hidden"' not in metrics
    assert "hidden" not in ready["profiles"] and "default" in ready["profiles"]


async def test_audit_line_per_token(sandbox, secret, run_server, tmp_path):
    """Each token handed out writes one audit line: profile, kind, caller, hit or miss and the
    refresh's correlation id; never the token. audit = false writes none."""
    path = tmp_path / "b.sock"
    addresses, logs = await run_server(
        make_settings(sandbox, secret, listen=f'"unix:{path}", "127.0.0.1:0"')
    )
    tokens = []
    conn = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(2):
            async with s.get("http://localhost/v1/token", headers=HEADERS) as r:
                tokens.append((await r.json())["access_token"])
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{addresses[1]}/v1/token?kind=aad", headers=HEADERS) as r:
            tokens.append((await r.json())["access_token"])
    await run_server.stop_all()  # stopping flushes the audit writer
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if '"token_served"' in x]
    assert len(lines) == 3
    assert lines[0]["caller"] == f"uid={os.getuid()} gid={os.getgid()} pid={os.getpid()}"
    assert lines[2]["caller"].startswith("127.0.0.1") and lines[2]["kind"] == "aad"
    assert [line["cache"] for line in lines[1:]] == ["hit", "hit"]
    assert all(len(line["correlation_id"]) == 36 for line in lines)
    assert not any(t in logs.getvalue() for t in tokens)


async def test_audit_can_be_switched_off(sandbox, secret, run_server):
    """audit = false: tokens are served with no audit line."""
    (address,), logs = await run_server(make_settings(sandbox, secret, server="audit = false"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/token", headers=HEADERS) as r:
            assert r.status == 200
    await run_server.stop_all()
    assert '"token_served"' not in logs.getvalue()


def test_secrets_are_not_on_the_command_line(tmp_path: Path) -> None:
    """The daemon takes no secret as an argument: a serve process's cmdline and environment
    carry none when secrets come from files (the recommended way)."""
    import subprocess
    import sys

    secret_value = "file-secret-" + os.urandom(8).hex()
    (tmp_path / "s").write_text(secret_value)
    config = tmp_path / "c.toml"
    config.write_text(f"""[server]
listen = ["unix:{tmp_path}/b.sock"]
[profiles.default]
tenant_id = "t"
client_id = "c"
client_secret_file = "{tmp_path}/s"
authority = "http://127.0.0.1:9"
warm = false
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--config", str(config)], stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if b'"listening"' in line:
                break
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert secret_value.encode() not in cmdline and secret_value.encode() not in environ
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
