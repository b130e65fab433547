"""The shared cache ([shared], Redis), two figures:

1. A new broker's first token: from Redis (another broker fetched it) vs from upstream (the
   sandbox on loopback, with the upstream latency given; Azure AD and Partner Center answer in
   roughly 100-300 ms each from a cloud region), median of several fresh broker processes.
2. Upstream calls per hour for N brokers with and without [shared]: N brokers in this process
   on one fake clock (each with its own session, Redis connection and jitter), simulated for
   several hours; the sandbox counts the calls.

    .venv/bin/python bench/shared_cache.py [--runs 5] [--latency 0.15] [--brokers 1,4,16,50]

Needs a redis-server binary (`make test` provides one in .venv/bin).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLIENT_ID,
    SECRET,
    TENANT,
    config,
    free_port,
    report,
    start_broker,
    start_sandbox,
    stop,
)
from tests.conftest import FakeClock
from tests.redisd import RedisServer

HOURS = 4  # simulated


def _key_file(directory: Path) -> Path:
    path = directory / "shared.key"
    path.write_bytes(random.randbytes(32))
    path.chmod(0o600)
    return path


def _shared(redis: RedisServer, key: Path) -> str:
    return f'\n[shared]\nredis_url = "{redis.url}"\nkey_file = "{key}"\n'


async def first_token_ms(port: int) -> float:
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/token HTTP/1.0\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    await reader.read()
    writer.close()
    assert b" 200 " in status, status
    return (time.perf_counter() - began) * 1000


async def first_token(runs: int, latency: float, redis: RedisServer, key: Path) -> list[dict]:
    sandbox = await start_sandbox(latency={"aad": latency, "partner": latency})
    rows = []
    try:
        for source in ("upstream", "redis"):
            times = []
            for _ in range(runs):
                redis.flush()
                if source == "redis":  # another broker of the fleet already fetched
                    port = free_port()
                    text = config(sandbox.url, port, profiles="[profiles.default]\nwarm = false\n")
                    other = await start_broker(text + _shared(redis, key), port)
                    await first_token_ms(port)
                    await stop(other)
                port = free_port()
                text = config(sandbox.url, port, profiles="[profiles.default]\nwarm = false\n")
                proc = await start_broker(text + _shared(redis, key), port)
                times.append(await first_token_ms(port))
                await stop(proc)
            rows.append(
                {
                    "first token from": source,
                    "upstream latency ms": latency * 1000,
                    "median ms": statistics.median(times),
                    "min ms": min(times),
                }
            )
    finally:
        await sandbox.stop()
    base = rows[0]["median ms"]
    for row in rows:
        row["ratio vs upstream"] = round(row["median ms"] / base, 3)
    return rows


async def calls_per_hour(n: int, shared: bool, redis: RedisServer, key: Path) -> dict:
    """N warm brokers on one fake clock for HOURS hours; upstream calls counted."""
    import aiohttp

    from broker.config.load import parse_settings
    from broker.core.service import Broker
    from broker.observe.logs import make_logger
    from broker.observe.metrics import Metrics
    from broker.observe.redact import Redactor
    from broker.sandbox import Sandbox, SandboxState

    redis.flush()
    clock = FakeClock()
    state = SandboxState(wall=clock.time)
    state.register(TENANT, CLIENT_ID, client_secret=SECRET)
    async with Sandbox(state) as sandbox, aiohttp.ClientSession() as session:
        text = config(sandbox.url, 0) + (_shared(redis, key) if shared else "")
        settings = parse_settings(text, env={"BENCH_SECRET": SECRET})
        brokers = []
        for i in range(n):
            rng = random.Random(i)
            broker = Broker(
                settings,
                clock=clock,
                log=make_logger(level="warning", stream=io.StringIO()),
                metrics=Metrics(),
                redactor=Redactor(),
                rand=rng.random,
            )
            await broker.start(session)
            brokers.append(broker)

        async def settle() -> None:
            while any(e.flight for b in brokers for e in b.cache.entries.values()):
                await asyncio.sleep(0.001)

        await settle()
        first_hour = None
        step = 10.0
        for i in range(int(HOURS * 3600 / step)):
            clock.advance(step)
            await asyncio.sleep(0)
            await settle()
            if (i + 1) * step == 3600:
                first_hour = sum(state.counts.values())
        for broker in brokers:
            await broker.close()
    total = sum(state.counts.values())
    assert first_hour is not None
    return {
        "brokers": n,
        "shared": "yes" if shared else "no",
        "calls in hour 1 (cold start)": first_hour,
        "calls per hour after": round((total - first_hour) / (HOURS - 1), 1),
    }


async def main(runs: int, latency: float, sizes: list[int]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    redis = RedisServer(directory / "redis").start()
    key = _key_file(directory)
    try:
        rows = await first_token(runs, latency, redis, key)
        report("shared_first_token", rows)
        print()
        rows = []
        for n in sizes:
            for shared in (False, True):
                rows.append(await calls_per_hour(n, shared, redis, key))
        alone = {r["brokers"]: r["calls per hour after"] for r in rows if r["shared"] == "no"}
        for row in rows:
            row["ratio vs no [shared]"] = round(
                row["calls per hour after"] / alone[row["brokers"]], 3
            )
        report("shared_calls_per_hour", rows, {"simulated hours": HOURS})
    finally:
        redis.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.15, help="s per upstream call")
    parser.add_argument("--brokers", default="1,4,16,50")
    args = parser.parse_args()
    sizes = [int(n) for n in args.brokers.split(",")]
    asyncio.run(main(args.runs, args.latency, sizes))
