"""The shared cache across real processes: four `pc-token-broker serve` processes, one real
Redis, the sandbox upstream in this process counting every call (tests/test_shared.py runs the
brokers of a fleet in one process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import HEADERS, config_text
from tests.support import free_port, until


class BrokerProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
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
    sandbox, secret, own_redis, shared_key, tmp_path, witness
) -> None:
    """4 processes x 200 concurrent cold callers: 1 Azure AD and 1 Partner Center call in total.
    A broker restarted while Redis holds the token serves its first caller with 0 upstream
    calls. Redis killed under load: 0 caller errors, the brokers fetch alone; Redis back: used
    again within seconds. Nothing in Redis is a token or secret in plain text."""
    redis_db = own_redis
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(sandbox, defaults="warm = false", server="refresh_min_interval = 0")
        + f'\n[shared]\nredis_url = "{redis_db.url}"\nkey_file = "{shared_key}"\n'
        + "timeout = 0.2\n"
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
            await _redis_killed_under_load(session, brokers[1:], redis_db, sandbox, one)
        finally:
            codes = [b.stop() for b in brokers if b.process is not None]
    assert all(code == 0 for code in codes), codes
    blob = b"\n".join(k + b"=" + v for k, v in redis_db.dump())
    for value in {*sandbox.state.issued_values, secret}:
        assert value.encode() not in blob


async def _redis_killed_under_load(session, live, redis, sandbox, one) -> None:
    statuses: list[int] = []
    stop = asyncio.Event()

    async def caller(b: BrokerProcess) -> None:
        while not stop.is_set():
            statuses.append((await one(b))[0])

    async def refresh(b: BrokerProcess) -> int:
        async with session.post(b.url + "/v1/token/default/refresh", headers=HEADERS) as r:
            await r.read()
            return r.status

    async def shared_state(b: BrokerProcess) -> str:
        async with session.get(b.url + "/v1/profiles", headers=HEADERS) as r:
            return (await r.json())["shared"]["state"]

    load = [asyncio.create_task(caller(b)) for b in live for _ in range(10)]
    try:
        redis.kill()
        for b in live[:2]:  # refreshes during the outage: each broker fetches alone
            assert await refresh(b) == 200
        assert [await shared_state(b) for b in live[:2]] == ["degraded", "degraded"]
        redis.start()

        async def connected() -> bool:
            return [await shared_state(b) for b in live[:2]] == ["connected", "connected"]

        await until(connected, "the brokers use Redis again", 10, every=0.05)
        assert await refresh(live[0]) == 200  # written to the new Redis
        before = dict(sandbox.state.counts)
        assert await refresh(live[1]) == 200  # and read from it by another broker
        assert sandbox.state.counts == before
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert len(statuses) > 30 and set(statuses) == {200}


async def test_every_line_a_shared_broker_writes_is_json(
    sandbox, secret, own_redis, shared_key, tmp_path, witness
) -> None:
    """A `serve` process with [shared] and log_format = "json", through start-up, a token, a
    Redis outage and SIGTERM: every line on its output parses as JSON, and no library warning
    was raised (redis-py warned, in two raw lines, about the sync Retry the broker passed it)."""
    config = tmp_path / "config.toml"
    config.write_text(
        config_text(sandbox, defaults="warm = false", server='log_format = "json"')
        + f'\n[shared]\nredis_url = "{own_redis.url}"\nkey_file = "{shared_key}"\n'
        + "timeout = 0.2\n"
    )
    env = {**os.environ, "TEST_CLIENT_SECRET": secret, "PYTHONUNBUFFERED": "1"}
    broker = BrokerProcess(config, env, tmp_path / "broker.log")
    witness.outputs.append(lambda: broker.log.read_text() if broker.log.exists() else "")
    async with aiohttp.ClientSession() as session:
        try:
            await broker.start(session)
            async with session.get(broker.url + "/v1/token", headers=HEADERS) as r:
                assert r.status == 200
            own_redis.kill()
            async with session.post(broker.url + "/v1/token/default/refresh", headers=HEADERS) as r:
                assert r.status == 200  # fetched alone while Redis is down
        finally:
            code = broker.stop()
    assert code == 0
    records = [json.loads(line) for line in broker.log.read_text().splitlines()]
    events = {record["event"] for record in records}
    assert {"shared_cache_connected", "shared_cache_degraded"} <= events, events
    assert not [r for r in records if r.get("logger") == "py.warnings"]
