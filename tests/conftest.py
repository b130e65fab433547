"""Shared fixtures: a fake clock, the sandbox upstream on loopback, and a broker under test."""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from yarl import URL

from broker.config.listen import Listen
from broker.config.load import parse_settings
from broker.config.settings import Settings
from broker.daemon.listeners import bind, bound_address
from broker.http.app import BROKER, create_app
from broker.http.server import HttpServer
from broker.observe.logs import make_logger
from broker.observe.redact import Redactor
from broker.sandbox import Sandbox, SandboxState

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-4333-8444-555555555555"
HEADERS = {"Metadata": "true"}


class _Timer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic and wall time that move only when a test says so; timers fire on `advance`."""

    def __init__(self, wall_start: float | None = None) -> None:
        self._mono = 1000.0
        self._offset = (time.time() if wall_start is None else wall_start) - self._mono
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    def call_at(self, deadline: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        heapq.heappush(self._timers, (deadline, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due, in order, at its own time."""
        target = self._mono + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            self._mono = max(self._mono, deadline)
            if not timer.cancelled:
                timer.callback()
        self._mono = target

    def next_timer(self) -> float | None:
        live = [d for d, _, t in self._timers if not t.cancelled]
        return min(live) if live else None


class Witness:
    """Sees every secret a test used and everything its brokers wrote (log lines, audit lines,
    every response body except the token deliveries themselves), and fails the test if one of
    the former appears in the latter."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.states: list[SandboxState] = []
        self.outputs: list[Callable[[], str]] = []

    def watch(self, state: SandboxState) -> SandboxState:
        state.issued_values = set()
        self.states.append(state)
        return state

    def check(self) -> None:
        values = set(self.secrets)
        for state in self.states:
            values |= state.issued_values or set()
            values |= {a.client_secret for a in state.apps.values() if a.client_secret}
        text = "\n".join(output() for output in self.outputs)
        leaked = sorted(v[:12] + "..." for v in values if v and v in text)
        assert not leaked, f"secrets or tokens leaked into logs or bodies: {leaked}"


@pytest.fixture(autouse=True)
def witness():
    w = Witness()
    yield w
    w.check()


# Successful answers of these routes carry tokens by design; every other body is witnessed.
_TOKEN_ROUTES = (
    "/v1/token",
    "/generatetoken",
    "/v3/generatetoken",
    "/msi/token",
    "/msi/tenants/",
    "/metadata/identity/oauth2/token",
)


def _delivers_token(request, response) -> bool:
    path = request.path
    return (
        response.status == 200 and path.startswith(_TOKEN_ROUTES) and not path.endswith("/refresh")
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def secret(witness: Witness) -> str:
    value = f"s3cr3t-{secrets.token_urlsafe(24)}"
    witness.secrets.add(value)
    return value


@pytest.fixture
async def sandbox(secret: str, witness: Witness):
    """The sandbox on loopback with one app registered, on the real clock."""
    async with Sandbox(witness.watch(SandboxState())) as sb:
        sb.state.register(TENANT, CLIENT_ID, client_secret=secret)
        yield sb


@pytest.fixture
async def fake_sandbox(secret: str, clock: FakeClock, witness: Witness):
    """The sandbox on loopback sharing the test's fake wall clock."""
    async with Sandbox(witness.watch(SandboxState(wall=clock.time))) as sb:
        sb.state.register(TENANT, CLIENT_ID, client_secret=secret)
        yield sb


@pytest.fixture
async def hostile():
    """The misbehaving Azure AD and Partner Center of tests/hostile.py, on loopback: each test
    sets what the two answer."""
    from tests.hostile import Hostile

    async with Hostile() as h:
        yield h


def config_text(
    sandbox: Sandbox, *, defaults: str = "", profiles: str | None = None, server: str = ""
) -> str:
    """A TOML config pointing at the sandbox; one warm profile 'default' unless told."""
    if profiles is None:
        profiles = "[profiles.default]\n"
    return f"""
[server]
listen = ["127.0.0.1:0"]
{server}
[defaults]
authority = "{sandbox.url}"
generatetoken_url = "{sandbox.url}/v3/generatetoken"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_env = "TEST_CLIENT_SECRET"
{defaults}
{profiles}
[mirror]
upstream_base = "{sandbox.url}"
"""


def make_settings(
    sandbox: Sandbox,
    secret: str,
    *,
    listen: str | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Settings:
    """The broker's settings from `config_text(sandbox, **kwargs)`, the client secret in the
    environment (with `env`). `listen`: the TOML list's items in place of the one loopback
    listener, e.g. '"unix:/path", "127.0.0.1:0"'."""
    text = config_text(sandbox, **kwargs)
    if listen is not None:
        text = text.replace('listen = ["127.0.0.1:0"]', f"listen = [{listen}]")
    return parse_settings(text, env={"TEST_CLIENT_SECRET": secret, **(env or {})})


class Client:
    """What the tests use of aiohttp's TestClient, against the broker's own server (the one
    the daemon runs: `HttpServer`, with its connection gate) on a loopback port."""

    def __init__(self, server: HttpServer, address: str) -> None:
        self.server = server
        self.app = server.app
        self.base = f"http://{address}"
        self.session = aiohttp.ClientSession()
        self._responses: list[aiohttp.ClientResponse] = []

    def make_url(self, path: str) -> URL:
        return URL(self.base + path)

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.session.request(method, self.make_url(path), **kwargs)
        self._responses.append(response)
        return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def close(self) -> None:
        """Stop the server (its audit lines are written out) and the client."""
        for response in self._responses:
            response.release()
        await self.session.close()
        await self.server.close()


@dataclass
class BrokerUnderTest:
    client: Client
    logs: io.StringIO
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def broker(self):
        return self.client.app[BROKER]

    async def get(self, path: str, **kwargs: Any):
        headers = {**HEADERS, **kwargs.pop("headers", {})}
        return await self.client.get(path, headers=headers, **kwargs)


@pytest.fixture
async def start_broker(witness: Witness):
    """Factory: the broker's application on its own server (as the daemon serves it) on a
    loopback port, logs captured (debug level)."""
    clients: list[Client] = []

    async def start(
        settings: Settings, *, clock: Any = None, rand: Any = None, redactor: Redactor | None = None
    ) -> BrokerUnderTest:
        logs = io.StringIO()
        redactor = redactor or Redactor()
        log = make_logger(fmt="json", level="debug", stream=logs, redactor=redactor)
        app = create_app(
            settings,
            clock=clock,
            log=log,
            redactor=redactor,
            rand=rand or (lambda: 0.5),
            audit_stream=logs,
        )
        bodies: list[bytes] = []

        async def witness_body(request, response) -> None:
            if not _delivers_token(request, response) and isinstance(response.body, bytes):
                bodies.append(response.body)

        app.on_response_prepare.append(witness_body)
        witness.outputs.append(logs.getvalue)
        witness.outputs.append(lambda: b"\n".join(bodies).decode("utf-8", "replace"))
        sock = bind(Listen.tcp("127.0.0.1", 0))  # whatever the settings say, as TestServer did
        server = HttpServer(app)
        await server.start([sock])
        client = Client(server, bound_address(sock))
        clients.append(client)
        return BrokerUnderTest(client, logs, settings)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def run_server(witness: Witness):
    """Factory: the real daemon (server.serve, in this loop) with settings from TOML text.
    Returns its listening addresses and the captured log text."""
    from broker.daemon.server import serve

    stops: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def run(settings: Settings) -> tuple[list[str], io.StringIO]:
        logs = io.StringIO()
        redactor = Redactor()
        stop = asyncio.Event()
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(
                settings,
                stop=stop,
                on_ready=ready.set_result,
                redactor=redactor,
                log=make_logger(stream=logs, redactor=redactor),
                audit_stream=logs,
            )
        )
        done, _ = await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            raise RuntimeError(f"serve exited with {task.result()}: {logs.getvalue()}")
        stops.append((stop, task))
        witness.outputs.append(logs.getvalue)
        return ready.result(), logs

    async def stop_all() -> None:
        while stops:
            stop, task = stops.pop()
            stop.set()
            assert await task == 0

    run.stop_all = stop_all  # type: ignore[attr-defined]
    yield run
    await stop_all()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real Redis for the session (unix socket in a temporary directory)."""
    from tests.redisd import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_db(redis_server):
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server


@pytest.fixture
def own_redis(tmp_path_factory):
    """A Redis of this test's own, for tests that kill it."""
    from tests.redisd import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis-own")).start()
    yield server
    server.kill()


@pytest.fixture
def shared_key(tmp_path) -> str:
    """A fresh 32-byte key file, mode 0600."""
    path = tmp_path / "shared.key"
    path.write_bytes(secrets.token_bytes(32))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
async def daemon(secret, tmp_path):
    """`pc-token-broker serve` as a real process, started by `await daemon(config_text)`."""
    from tests.support import Daemon  # support builds on this module's builders

    started: list[Daemon] = []

    async def start(config: str, *argv_prefix: str, env: dict[str, str] | None = None) -> Daemon:
        path = tmp_path / "broker.toml"
        path.write_text(config)
        args = [*argv_prefix, sys.executable, "-m", "broker", "serve", "--config", str(path)]
        proc = await asyncio.create_subprocess_exec(
            *args,
            env={**os.environ, "TEST_CLIENT_SECRET": secret, **(env or {})},
            stderr=asyncio.subprocess.PIPE,
        )
        d = Daemon(proc)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
