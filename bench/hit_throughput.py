"""Cache-hit throughput and latency: the broker against a bare aiohttp app returning the same
prebuilt bytes, measured in the same run, one after the other, each server alone on one core
and the load generator on the other.

    .venv/bin/python bench/hit_throughput.py [--seconds 5] [--rounds 3]

Load: wrk (installed from Debian by this script when missing and run as root), else a Python
load generator. Reports requests/s, p50 and p99 at 1, 16 and 64 connections for JSON and
text/plain, the ratio to the baseline, the broker on uvloop (the `speed` extra) against the
same default-loop baseline, and each server's own CPU time per request (µs, from
/proc/PID/stat), which holds across machines and load generators where requests/s does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    config,
    free_port,
    report,
    start_broker,
    start_process,
    start_sandbox,
    stop,
    wait_healthy,
)

SERVER_CPU, LOAD_CPU = 1, 0
BASELINE = """
import sys
from aiohttp import web
json_body, text_body = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
H = {"Cache-Control": "no-store"}
async def json_handler(request):
    return web.Response(body=json_body, content_type="application/json", headers=H)
async def text_handler(request):
    return web.Response(body=text_body, content_type="text/plain", headers=H)
async def healthz(request):
    return web.Response(body=b"{}")
app = web.Application()
app.router.add_get("/json", json_handler)
app.router.add_get("/text", text_handler)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def ensure_wrk() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True)
        wrk = shutil.which("wrk")
    return wrk


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


async def wrk_run(
    wrk: str, url: str, conns: int, seconds: float, headers: dict[str, str]
) -> dict[str, float]:
    args = [
        "taskset",
        "-c",
        str(LOAD_CPU),
        wrk,
        "-t1",
        f"-c{conns}",
        f"-d{round(seconds)}s",
        "--latency",
        url,
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode()
    if "Requests/sec:" not in out:
        raise RuntimeError(f"wrk failed on {url}:\n{out}")
    result = {
        "rps": float(out.split("Requests/sec:")[1].split()[0]),
        "requests": float(out.split(" requests in ")[0].split()[-1]),
    }
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            result["p50_ms" if parts[0] == "50%" else "p99_ms"] = _ms(parts[1])
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    return result


async def python_run(
    url: str, conns: int, seconds: float, headers: dict[str, str]
) -> dict[str, float]:
    """Fallback load generator (slower than wrk: ratios stay meaningful, absolutes do not)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with s.get(url, headers=headers) as r:
                    await r.read()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(conns)))
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "requests": float(len(latencies)),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    load,
    url: str,
    conns: int,
    seconds: float,
    headers: dict[str, str],
    rounds: int,
    pid: int,
) -> dict[str, float]:
    """Median over `rounds` of requests/s, p50/p99 and the server's own CPU time per request
    (µs): the figure that holds across machines and load generators."""
    runs = []
    for _ in range(rounds):
        before = cpu_seconds(pid)
        run = await load(url, conns, seconds, headers)
        run["cpu_us"] = (cpu_seconds(pid) - before) / max(run.pop("requests"), 1) * 1e6
        runs.append(run)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def main(seconds: float, rounds: int, conn_counts: list[int], bodies: list[str]) -> None:
    wrk = ensure_wrk()
    load = (lambda *a: wrk_run(wrk, *a)) if wrk else python_run
    sandbox = await start_sandbox()
    loops = {"asyncio": 'event_loop = "asyncio"', "uvloop": 'event_loop = "uvloop"'}
    brokers = {}
    for name, extra in loops.items():
        port = free_port()
        proc = await start_broker(config(sandbox.url, port, extra=extra), port, cpu=SERVER_CPU)
        brokers[name] = (proc, f"http://127.0.0.1:{port}/v1/token")
    tmp = Path(tempfile.mkdtemp())
    async with aiohttp.ClientSession() as s:
        for media, name in (("application/json", "json"), ("text/plain", "text")):
            async with s.get(
                brokers["asyncio"][1], headers={"Metadata": "true", "Accept": media}
            ) as r:
                (tmp / name).write_bytes(await r.read())
    base_port = free_port()
    baseline = await start_process(
        [sys.executable, "-c", BASELINE, str(base_port), str(tmp / "json"), str(tmp / "text")],
        cpu=SERVER_CPU,
    )
    await wait_healthy(base_port)
    rows = []
    for conns in conn_counts:
        for media, name in (("application/json", "json"), ("text/plain", "text")):
            if name not in bodies:
                continue
            headers = {"Metadata": "true", "Accept": media}
            base = await measure(
                load,
                f"http://127.0.0.1:{base_port}/{name}",
                conns,
                seconds,
                {},
                rounds,
                baseline.pid,
            )
            rows.append(
                {"server": "bare aiohttp", "body": name, "conns": conns, **base, "ratio": 1.0}
            )
            loop_names = ("asyncio", "uvloop") if conns == 16 else ("asyncio",)
            for loop_name in loop_names:
                proc, url = brokers[loop_name]
                got = await measure(load, url, conns, seconds, headers, rounds, proc.pid)
                rows.append(
                    {
                        "server": f"broker ({loop_name})",
                        "body": name,
                        "conns": conns,
                        **got,
                        "ratio": round(got["rps"] / base["rps"], 3),
                    }
                )
    for proc, _ in brokers.values():
        await stop(proc)
    await stop(baseline)
    await sandbox.stop()
    report(
        "hit_throughput",
        rows,
        {
            "load generator": "wrk -t1 (pinned to cpu 0)" if wrk else "python (aiohttp client)",
            "servers": "pinned to cpu 1, one at a time",
            "per point": f"median of {rounds} runs of {seconds:g} s",
            "broker": "audit line on, default config",
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--bodies", nargs="+", default=["json", "text"])
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds, args.conns, args.bodies))
