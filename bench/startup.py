"""Start-up time: from process start to the first 200 on /healthz, the broker against a bare
aiohttp app, median of several runs.

    .venv/bin/python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    config,
    free_port,
    report,
    start_baseline,
    start_broker,
    start_sandbox,
    stop,
)


async def timed(start) -> float:
    began = time.perf_counter()
    proc = await start()
    elapsed = time.perf_counter() - began
    await stop(proc)
    return elapsed


async def main(runs: int) -> None:
    sandbox = await start_sandbox()
    rows = []
    for name, start in (
        ("broker", lambda port: start_broker(config(sandbox.url, port), port)),
        ("bare aiohttp app", lambda port: start_baseline(port)),
    ):
        times = []
        for _ in range(runs):
            port = free_port()
            times.append(await timed(lambda port=port, start=start: start(port)))
        rows.append(
            {
                "server": name,
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
            }
        )
    await sandbox.stop()
    report("startup", rows, {"runs": runs, "measured": "exec to the first /healthz 200"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
