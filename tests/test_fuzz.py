"""Property-based: whatever a local caller sends, the broker answers with a 4xx/2xx and a
well-formed body, never a 500 and never a traceback."""

from __future__ import annotations

import asyncio
import json
import string

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config.load import parse_settings
from broker.daemon.server import serve
from broker.sandbox import Sandbox
from tests.conftest import CLIENT_ID, TENANT, config_text

METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "BREW"]
)
SEGMENTS = st.sampled_from(
    [
        "v1",
        "token",
        "default",
        "profiles",
        "refresh",
        "healthz",
        "readyz",
        "metrics",
        "generatetoken",
        "v3",
        "msi",
        "..",
        "%2e%2e",
        "%00",
        "x",
    ]
)
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet=string.printable.replace("#", "").replace("?", ""), max_size=40).map(
        lambda t: "/" + t.strip().replace(" ", "%20").replace("\n", "").replace("\r", "")
    ),
)
HEADER_NAMES = st.sampled_from(
    [
        "Accept",
        "Content-Type",
        "Metadata",
        "Host",
        "Authorization",
        "X-Broker-Key",
        "ms-correlationid",
        "X-IDENTITY-HEADER",
        "Origin",
        "Content-Encoding",
        "X-Random",
    ]
)
HEADER_VALUES = st.text(alphabet=string.ascii_letters + string.digits + " /;=,.*-+:_", max_size=60)
QUERIES = st.dictionaries(
    st.sampled_from(["kind", "api-version", "resource", "client_id", "x"]),
    st.text(alphabet=string.ascii_letters + "/:.-_", max_size=30),
    max_size=3,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b'{"grant_type": "jwt_token"}',
            b"grant_type=jwt_token",
            b"<a><grant_type>jwt_token</grant_type></a>",
            b"{",
            b"<",
        ]
    ),
)


async def _start(tmp: str):
    sandbox = Sandbox()
    sandbox.state.register(TENANT, CLIENT_ID, client_secret="fuzz-secret-value-123")
    await sandbox.start()
    text = config_text(sandbox)
    cfg = parse_settings(text, env={"TEST_CLIENT_SECRET": "fuzz-secret-value-123"})
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    import io

    from broker.observe.logs import make_logger

    logs = io.StringIO()
    task = asyncio.create_task(
        serve(
            cfg,
            stop=stop,
            on_ready=ready.set_result,
            log=make_logger(stream=logs),
            audit_stream=logs,
        )
    )
    (address,) = await ready
    return sandbox, stop, task, address, logs


def test_random_requests_never_get_a_500_or_a_traceback(tmp_path) -> None:
    """Random methods, paths, queries, headers and bodies: every answer is below 500 (or a
    503/502/504 from upstream handling), its body has no traceback, and errors are JSON."""
    loop = asyncio.new_event_loop()
    sandbox, stop, task, address, logs = loop.run_until_complete(_start(str(tmp_path)))
    session = aiohttp.ClientSession(loop=loop, auto_decompress=False)
    seen: list[int] = []

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        method=METHODS,
        path=PATHS,
        query=QUERIES,
        headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5),
        body=BODIES,
    )
    def attack(method, path, query, headers, body) -> None:
        async def go() -> tuple[int, bytes, str]:
            async with session.request(
                method,
                f"http://{address}{path}",
                params=query,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as r:
                return r.status, await r.read(), r.headers.get("Content-Type", "")

        status, content, content_type = loop.run_until_complete(go())
        seen.append(status)
        assert status < 500 or status in (502, 503, 504), (status, content[:200])
        assert b"Traceback" not in content and b'File "' not in content
        if status >= 400 and method != "HEAD":
            assert "json" in content_type or "xml" in content_type, content_type
            if "json" in content_type:
                json.loads(content)

    try:
        attack()
    finally:
        loop.run_until_complete(session.close())
        stop.set()
        assert loop.run_until_complete(task) == 0
        loop.run_until_complete(sandbox.stop())
        loop.close()
    assert len(seen) >= 250 and "Traceback" not in logs.getvalue()
