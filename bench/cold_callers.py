"""1,000 concurrent callers on a cold profile: how many upstream calls (must be 1 per kind) and
how long until every caller has its token.

    .venv/bin/python bench/cold_callers.py [--callers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import config, free_port, report, start_broker, start_sandbox, stop

UPSTREAM_LATENCY = 0.2  # s per upstream call, so the crowd arrives while the flight is open


async def main(callers: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * callers)), hard))
    sandbox = await start_sandbox(latency={"aad": UPSTREAM_LATENCY, "partner": UPSTREAM_LATENCY})
    port = free_port()
    broker = await start_broker(
        config(
            sandbox.url,
            port,
            profiles="[profiles.default]\nwarm = false\n",
            extra=f"max_connections = {2 * callers}",
        ),
        port,
        cpu=1,
    )
    statuses: list[int] = []
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = asyncio.Event()

        async def caller() -> None:
            await start.wait()
            began = time.perf_counter()
            async with session.get(
                f"http://127.0.0.1:{port}/v1/token", headers={"Metadata": "true"}
            ) as r:
                await r.read()
                statuses.append(r.status)
            latencies.append(time.perf_counter() - began)

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.sleep(0)
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        total = time.perf_counter() - began
    await stop(broker)
    await sandbox.stop()
    latencies.sort()
    report(
        "cold_callers",
        [
            {
                "callers": callers,
                "ok": statuses.count(200),
                "azure_ad_calls": sandbox.state.counts["aad"],
                "generatetoken_calls": sandbox.state.counts["partner"],
                "seconds_to_serve_all": round(total, 3),
                "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                "max_ms": round(latencies[-1] * 1000, 1),
            }
        ],
        {"upstream latency per call": f"{UPSTREAM_LATENCY} s (two calls in sequence)"},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--callers", type=int, default=1000)
    asyncio.run(main(parser.parse_args().callers))
