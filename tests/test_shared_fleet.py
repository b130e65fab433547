"""The issue's done-when, with real processes: four `pc-token-broker serve` processes, one
real Redis, the sandbox upstream in this process counting every call."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import HEADERS, config_text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        text = config.read_text().replace(
            'listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{self.port}"]'
        )
        self.config = config.with_name(f"config-{self.port}.toml")
        self.config.write_text(text)
        self.log = log.with_name(f"broker-{self.port}.log")
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=log,
            )

    async def start(self, session: aiohttp.ClientSession) -> BrokerProcess:
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + 30
        while True:  # readiness: /healthz answers (a poll with a deadline, not a sleep in hope)
            try:
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "broker did not start"
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


async def test_four_broker_processes_share_one_redis(
    sandbox, secret, redis_db, shared_key, tmp_path, witness
) -> None:
    """4 processes x 200 concurrent cold callers: 1 Azure AD and 1 Partner Center call in total.
    A broker restarted while Redis holds the token serves its first caller with 0 upstream
    calls. Nothing in Redis is a token or secret in plain text."""
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(sandbox, defaults="warm = false", server='log_format = "json"')
        + f'\n[shared]\nredis_url = "{redis_db.url}"\nkey_file = "{shared_key}"\n'
    )
    env = {**os.environ, "TEST_CLIENT_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    sandbox.state.latency = {"aad": 0.05, "partner": 0.05}
    connector = aiohttp.TCPConnector(limit=0)
    brokers = [BrokerProcess(config, env, tmp_path / "broker.log") for _ in range(4)]
    for b in brokers:
        witness.outputs.append(lambda b=b: b.log.read_text() if b.log.exists() else "")
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await asyncio.gather(*(b.start(session) for b in brokers))

            async def one(b: BrokerProcess) -> tuple[int, str]:
                async with session.get(b.url + "/v1/token", headers=HEADERS) as r:
                    body = await r.json()
                    return r.status, body.get("access_token", "")

            answers = await asyncio.gather(*(one(b) for b in brokers for _ in range(200)))
            assert [status for status, _ in answers] == [200] * 800
            assert len({token for _, token in answers}) == 1
            assert sandbox.state.counts == {"aad": 1, "partner": 1}

            assert brokers[0].stop() == 0
            restarted = await BrokerProcess(config, env, tmp_path / "broker.log").start(session)
            brokers.append(restarted)
            status, token = await one(restarted)
            assert status == 200 and token == answers[0][1]
            assert sandbox.state.counts == {"aad": 1, "partner": 1}  # 0 upstream calls
        finally:
            codes = [b.stop() for b in brokers if b.process is not None]
    assert all(code == 0 for code in codes), codes
    blob = b"\n".join(k + b"=" + v for k, v in redis_db.dump())
    for value in {*sandbox.state.issued_values, secret}:
        assert value.encode() not in blob
