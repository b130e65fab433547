"""Memory of the drop-in mirror under a flood of distinct bearers.

The broker runs as its own process with [mirror] max_entries = 10,000; this script runs the
sandbox and drives 100,000 requests, each with a distinct (valid) bearer, through the mirror.
It prints the broker's RSS at idle, after 10,000 and after 100,000 bearers, the cache size
from /metrics, and a bare aiohttp process's idle RSS for scale.

    .venv/bin/python bench/mirror_memory.py [--bearers 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    config,
    free_port,
    report,
    rss_mb,
    start_baseline,
    start_broker,
    start_sandbox,
    stop,
)
from broker.sandbox import Sandbox
from broker.sandbox.state import PARTNER_AUDIENCE

BODY = b'{"grant_type": "jwt_token"}'


async def flood(
    session: aiohttp.ClientSession, url: str, sandbox: Sandbox, count: int, concurrency: int = 64
) -> int:
    """Send `count` requests with distinct bearers; returns how many got a 200."""
    ok = 0
    queue = iter(range(count))

    async def worker() -> None:
        nonlocal ok
        for _ in queue:
            bearer = sandbox.state.mint({"aud": PARTNER_AUDIENCE}, 3600)
            async with session.post(
                url,
                data=BODY,
                headers={
                    "Authorization": f"Bearer {bearer}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            ) as resp:
                await resp.read()
                ok += resp.status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def cache_entries(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^broker_mirror_cache_entries (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else -1


async def main(bearers: int) -> None:
    sandbox = await start_sandbox()
    sandbox.state.calls = sandbox.state.calls.__class__(maxlen=10)  # keep the bench lean
    port = free_port()
    broker = await start_broker(config(sandbox.url, port, profiles="", extra=""), port, cpu=1)
    base = f"http://127.0.0.1:{port}"
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        rows.append(
            {
                "phase": "idle",
                "bearers": 0,
                "rss_mb": rss_mb(broker.pid),
                "cache_entries": await cache_entries(session, base),
                "seconds": 0.0,
            }
        )
        done = 0
        for target in (min(10_000, bearers), bearers):
            started = time.perf_counter()
            ok = await flood(session, f"{base}/v3/generatetoken", sandbox, target - done)
            done = target
            rows.append(
                {
                    "phase": f"after {target:,} bearers",
                    "bearers": target,
                    "rss_mb": rss_mb(broker.pid),
                    "cache_entries": await cache_entries(session, base),
                    "seconds": time.perf_counter() - started,
                    "ok": ok,
                }
            )
    await stop(broker)
    baseline_port = free_port()
    baseline = await start_baseline(baseline_port)
    baseline_rss = rss_mb(baseline.pid)
    await stop(baseline)
    await sandbox.stop()
    report(
        "mirror_memory",
        rows,
        {"max_entries": 10_000, "bare aiohttp process, idle RSS MB": round(baseline_rss, 1)},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bearers", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().bearers))
