"""Shared fixtures: a fake clock, the sandbox upstream on loopback, and a broker under test."""

from __future__ import annotations

import heapq
import io
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.app import BROKER, create_app
from broker.config import Settings, parse_settings
from broker.logs import make_logger
from broker.redact import Redactor
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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def secret() -> str:
    return f"s3cr3t-{secrets.token_urlsafe(24)}"


@pytest.fixture
async def sandbox(secret: str):
    """The sandbox on loopback with one app registered, on the real clock."""
    async with Sandbox() as sb:
        sb.state.register(TENANT, CLIENT_ID, client_secret=secret)
        yield sb


@pytest.fixture
async def fake_sandbox(secret: str, clock: FakeClock):
    """The sandbox on loopback sharing the test's fake wall clock."""
    async with Sandbox(SandboxState(wall=clock.time)) as sb:
        sb.state.register(TENANT, CLIENT_ID, client_secret=secret)
        yield sb


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


def make_settings(sandbox: Sandbox, secret: str, **kwargs: Any) -> Settings:
    return parse_settings(config_text(sandbox, **kwargs), env={"TEST_CLIENT_SECRET": secret})


@dataclass
class BrokerUnderTest:
    client: TestClient
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
async def start_broker():
    """Factory: a broker app on a loopback test server, logs captured (debug level)."""
    clients: list[TestClient] = []

    async def start(
        settings: Settings, *, clock: Any = None, rand: Any = None, redactor: Redactor | None = None
    ) -> BrokerUnderTest:
        logs = io.StringIO()
        redactor = redactor or Redactor()
        log = make_logger(fmt="json", level="debug", stream=logs, redactor=redactor)
        app = create_app(
            settings, clock=clock, log=log, redactor=redactor, rand=rand or (lambda: 0.5)
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return BrokerUnderTest(client, logs, settings)

    yield start
    for client in clients:
        await client.close()
