"""Latency across refresh boundaries: is a refresh visible to callers?

Two brokers in one run, each alone on one core under the same wrk load: one whose tokens live
12 s behind a 0.5 s upstream (so a minute spans several refreshes of both kinds), one whose
tokens live an hour (no refresh at all). Reports p50/p99 of each and the p99 ratio.

    .venv/bin/python bench/refresh_latency.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import config, free_port, report, start_broker, start_sandbox, stop
from bench.hit_throughput import ensure_wrk, python_run, wrk_run

PROFILE = "[profiles.default]\nrefresh_ahead = 0.25\nmin_refresh_margin = 0\nmin_remaining = 1\n"


async def run(lifetime: float, seconds: float, load) -> dict:
    sandbox = await start_sandbox(
        lifetimes={"aad": lifetime + 2, "partner": lifetime}, latency={"aad": 0.5, "partner": 0.5}
    )
    port = free_port()
    broker = await start_broker(
        config(sandbox.url, port, profiles=PROFILE, extra='event_loop = "asyncio"'), port, cpu=1
    )
    await sandbox.state.wait_calls("partner", 1)
    await asyncio.sleep(1)  # the warm fetch has landed (0.5 s upstream)
    before = dict(sandbox.state.counts)
    result = await load(f"http://127.0.0.1:{port}/v1/token", 16, seconds, {"Metadata": "true"})
    refreshes = {k: sandbox.state.counts[k] - before.get(k, 0) for k in ("aad", "partner")}
    await stop(broker)
    await sandbox.stop()
    return {**result, "refreshes_aad": refreshes["aad"], "refreshes_partner": refreshes["partner"]}


async def main(seconds: float) -> None:
    wrk = ensure_wrk()
    load = (lambda *a: wrk_run(wrk, *a)) if wrk else python_run
    steady = await run(3600, seconds, load)
    refreshing = await run(12, seconds, load)
    rows = [
        {"tokens": "1 h (no refresh)", **steady},
        {"tokens": "12 s, 0.5 s upstream", **refreshing},
    ]
    report(
        "refresh_latency",
        rows,
        {
            "p99 ratio (refreshing / steady)": round(refreshing["p99_ms"] / steady["p99_ms"], 2),
            "load": f"{'wrk' if wrk else 'python'}, 16 connections, {seconds:g} s each",
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    asyncio.run(main(parser.parse_args().seconds))
