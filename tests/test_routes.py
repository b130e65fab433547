"""The routes on aiohttp's router: every path and method answered as the dispatch table used to
(the daemon and the test fixture run the same server), 404/405 in the JSON error shape,
`Expect: 100-continue` works, and a caller gone mid-body is a disconnect, not a crash."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import HEADERS, make_settings
from tests.support import mirror_head, raw, status_and_json

# (method, path, status, error code or None for success)
TABLE = [
    ("GET", "/v1/token", 200, None),
    ("GET", "/v1/token/default", 200, None),
    ("GET", "/v1/token/default?kind=aad", 200, None),
    ("POST", "/v1/token", 405, "method_not_allowed"),
    ("PUT", "/v1/token/default", 405, "method_not_allowed"),
    ("GET", "/v1/token/default/refresh", 405, "method_not_allowed"),
    ("GET", "/v1/token/refresh", 404, "unknown_profile"),  # a profile named "refresh"
    ("GET", "/v1/token/", 404, "not_found"),
    ("GET", "/v1/token/default/", 404, "not_found"),
    ("GET", "/v1/token/a/b", 404, "not_found"),
    ("GET", "/v1/token/..%2Fmetrics", 404, "unknown_profile"),  # one segment, as the router had it
    ("GET", "/v1/token/%64efault", 200, None),  # percent-decoded: the profile "default"
    ("POST", "/v1/token//refresh", 404, "not_found"),
    ("POST", "/v1/token/nope/refresh", 404, "unknown_profile"),
    ("GET", "/v1/profiles", 200, None),
    ("DELETE", "/v1/profiles", 405, "method_not_allowed"),
    ("GET", "/v1/profiles/", 404, "not_found"),
    ("GET", "/v1/tenants/default", 400, "tenants_not_configured"),
    ("POST", "/v1/tenants/default", 405, "method_not_allowed"),
    ("GET", "/v1/tenants/default/contoso.example/invalidate", 405, "method_not_allowed"),
    ("POST", "/v1/tenants//contoso.example/invalidate", 404, "not_found"),
    ("GET", "/v1/tenants/default/contoso.example", 404, "not_found"),
    ("GET", "/msi/tenants//token", 404, "not_found"),
    ("POST", "/msi/tenants/contoso.example/token", 405, "method_not_allowed"),
    ("GET", "/healthz", 200, None),
    ("POST", "/healthz", 405, "method_not_allowed"),
    ("GET", "/readyz", 200, None),
    ("GET", "/metrics", 200, None),
    ("GET", "/generatetoken", 405, "method_not_allowed"),
    ("GET", "/v3/generatetoken", 405, "method_not_allowed"),
    ("GET", "/V1/TOKEN", 404, "not_found"),  # paths are case-sensitive, as aiohttp's router
    ("GET", "/", 404, "not_found"),
    ("GET", "/v2/whatever", 404, "not_found"),
]


async def answers(session: aiohttp.ClientSession, base: str) -> list[tuple[int, str | None]]:
    out = []
    for method, path, _, _ in TABLE:
        async with session.request(method, base + path, headers=HEADERS) as r:
            code = None
            if r.status >= 400:
                assert r.content_type == "application/json", (method, path)
                code = (await r.json())["error"]["code"]
            out.append((r.status, code))
    return out


async def test_every_path_and_method_as_the_router_answered(
    sandbox, secret, run_server, start_broker
):
    addresses, _ = await run_server(make_settings(sandbox, secret))
    expected = [(status, code) for _, _, status, code in TABLE]
    async with aiohttp.ClientSession() as session:
        daemon = await answers(session, f"http://{addresses[0]}")
    assert daemon == expected
    b = await start_broker(make_settings(sandbox, secret))
    app = await answers(b.client.session, str(b.client.make_url("")))
    assert app == expected


async def test_requests_are_counted_by_route(sandbox, secret, run_server):
    addresses, _ = await run_server(make_settings(sandbox, secret))
    base = f"http://{addresses[0]}"
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/token/default", "/v1/token/default", "/nowhere"):
            async with session.get(base + path, headers=HEADERS) as r:
                await r.read()
        async with session.get(base + "/metrics") as r:
            text = await r.text()
    assert 'route="token",status="200"} 2.0' in text
    assert 'route="other",status="404"} 1.0' in text


async def test_expect_100_continue_is_answered(sandbox, secret, run_server):
    """A client that waits for 100 Continue before sending its body is not left waiting."""
    addresses, _ = await run_server(make_settings(sandbox, secret))
    host, port = addresses[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b"grant_type=jwt_token"
    writer.write(
        b"POST /generatetoken HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer not-a-jwt\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 ")
    assert not head.startswith(b"HTTP/1.1 100")


async def test_unknown_expectation_is_417(sandbox, secret, run_server):
    addresses, _ = await run_server(make_settings(sandbox, secret))
    answer = await raw(
        addresses[0],
        b"POST /v1/token/default/refresh HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n"
        b"Expect: 200-ok\r\nContent-Length: 0\r\n\r\n",
    )
    status, body = status_and_json(answer)
    assert status == 417
    assert body["error"]["code"] == "expectation_failed"


async def test_hostile_paths_get_a_json_4xx(sandbox, secret, run_server):
    """Raw non-UTF-8 bytes, broken percent-escapes, a NUL and a path of 2,000 segments never
    crash the dispatch: a JSON 4xx each."""
    addresses, logs = await run_server(make_settings(sandbox, secret))
    targets = [
        b"/v1/token/\xff\xfe",
        b"/v1/token/%ff%fe",
        b"/v1/token/%zz",
        b"/v1/tenants/default/%00/invalidate",
        b"/v1/" + b"a/" * 2000 + b"token",
        b"/msi/tenants/%2e%2e%2f/token",
    ]
    for target in targets:
        answer = await raw(
            addresses[0],
            b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n"
            b"Connection: close\r\n\r\n",
        )
        status, body = status_and_json(answer)
        assert 400 <= status < 500, (target[:40], status)
        # the broker's shape, or the managed-identity protocol's on /msi
        assert body.get("error", {}).get("code") or body.get("statusCode") == status, target[:40]
    assert "handler_crashed" not in logs.getvalue()


async def test_a_client_gone_mid_body_is_not_a_crash(sandbox, secret, run_server):
    """A mirror caller that sends part of its body and disconnects is logged as a disconnect
    at info level: no handler_crashed, no traceback."""
    (address,), logs = await run_server(make_settings(sandbox, secret))
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(mirror_head(100) + b'{"grant_type"')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    deadline = asyncio.get_running_loop().time() + 10
    while '"client_disconnected"' not in logs.getvalue() and '"handler_crashed"' not in (
        logs.getvalue()
    ):
        assert asyncio.get_running_loop().time() < deadline, logs.getvalue()[-2000:]
        await asyncio.sleep(0.01)  # polling the broker's log for the event, with a deadline
    assert '"handler_crashed"' not in logs.getvalue()
    assert "Traceback" not in logs.getvalue()
