"""Broker memory: RSS at idle and after a million cache hits (the mirror's memory under
100,000 distinct bearers is bench/mirror_memory.py).

    .venv/bin/python bench/memory.py [--hits 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

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
from bench.hit_throughput import ensure_wrk, wrk_run


async def main(hits: int) -> None:
    wrk = ensure_wrk()
    assert wrk, "this bench needs wrk (apt-get install wrk)"
    sandbox = await start_sandbox()
    port = free_port()
    broker = await start_broker(config(sandbox.url, port), port, cpu=1)
    await sandbox.state.wait_calls("partner", 1)
    await asyncio.sleep(0.5)
    rows = [{"phase": "idle, tokens cached", "requests": 0, "rss_mb": rss_mb(broker.pid)}]
    served = 0
    while served < hits:
        result = await wrk_run(
            wrk, f"http://127.0.0.1:{port}/v1/token", 16, 20, {"Metadata": "true"}
        )
        served += int(result["rps"] * 20)
    rows.append({"phase": "after cache hits", "requests": served, "rss_mb": rss_mb(broker.pid)})
    await stop(broker)
    base_port = free_port()
    baseline = await start_baseline(base_port)
    rows.append({"phase": "bare aiohttp app, idle", "requests": 0, "rss_mb": rss_mb(baseline.pid)})
    await stop(baseline)
    await sandbox.stop()
    report("memory", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().hits))
