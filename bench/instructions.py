"""Instructions per cache hit, counted by callgrind: a figure that does not move with machine
noise (the same binary, inputs and environment give the same count, whatever else the machine
is doing), so anyone can replay it and compare.

    make bench-instructions        # or: .venv/bin/python bench/instructions.py [--requests 200]

Each server runs under `valgrind --tool=callgrind` twice: once answering WARMUP + N requests,
once WARMUP + 2N, from 16 keep-alive connections (an aiohttp client in this process, outside
valgrind). The difference of the two totals is the cost of exactly N requests: start-up,
warm-up and shutdown cancel out. PYTHONHASHSEED is fixed so both runs do the same work.

Servers, each on the default asyncio loop and on uvloop:
- the broker, serving `GET /v1/token/{profile}` from its cache (every defence on: origin guard,
  required header, caller identity, per-profile access, metrics, the audit line);
- the broker with `audit = false`;
- a bare aiohttp `web.Application` serving the same route shape (`/v1/token/{profile}`, a
  dynamic route) with the same prebuilt body and headers: the floor aiohttp itself sets;
- the same bare app with a static route (`/v1/token/default`): the broker resolves each
  profile configured at start-up as a plain path, so this is the stricter floor.

The ratio is the bare app's instructions over the broker's on the same loop: above 1.0 the
broker does less work per hit than the bare app. `ratio_vs_bare_same_loop` is against the
dynamic route, `ratio_vs_bare_static_same_loop` against the static one. Needs valgrind
(installed from Debian when missing and run as root) and uvloop (the `speed` extra; `make
bench-instructions` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SECRET, config, free_port, report, start_sandbox, wait_healthy

WARMUP = 500
CONNECTIONS = 16
HEADERS = {"Metadata": "true", "Host": "127.0.0.1"}

BARE_APP = """
import asyncio, sys
from aiohttp import web
loop_name, port, body = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
HEADERS = {"Cache-Control": "no-store"}
async def token(request):
    return web.Response(body=body, content_type="application/json", headers=HEADERS)
async def healthz(request):
    return web.Response(body=b'{"status": "ok"}', content_type="application/json")
app = web.Application()
app.router.add_get("/v1/token/default" if sys.argv[4] == "static" else "/v1/token/{profile}", token)
app.router.add_get("/healthz", healthz)
if loop_name == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
"""


def ensure_valgrind() -> str:
    valgrind = shutil.which("valgrind")
    if valgrind is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], capture_output=True)
        valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("instructions: needs valgrind (apt-get install valgrind)")
    return valgrind


def total_instructions(out_file: Path) -> int:
    """The `totals:` (or `summary:`) line of a callgrind output file: instructions (Ir)."""
    text = out_file.read_text(errors="replace")
    match = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(match.group(1))


async def drive(port: int, path: str, requests: int) -> None:
    """Exactly `requests` GETs over CONNECTIONS keep-alive connections; every answer a 200."""
    per, extra = divmod(requests, CONNECTIONS)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with session.get(f"http://127.0.0.1:{port}{path}", headers=HEADERS) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{path}: {r.status}")

        await asyncio.gather(*(worker(per + (i < extra)) for i in range(CONNECTIONS)))


async def measure_once(
    valgrind: str, command: list[str], port: int, path: str, requests: int, workdir: Path
) -> int:
    out_file = workdir / f"callgrind.{port}.{requests}.out"
    proc = await asyncio.create_subprocess_exec(
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        *command,
        env={**os.environ, "PYTHONHASHSEED": "0", "BENCH_SECRET": SECRET},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_healthy(port, timeout=300)
        await drive(port, path, WARMUP + requests)
    finally:
        proc.terminate()
        await proc.wait()
    return total_instructions(out_file)


async def per_hit(valgrind: str, make_command, path: str, requests: int, workdir: Path) -> float:
    counts = []
    for n in (requests, 2 * requests):
        port = free_port()
        counts.append(await measure_once(valgrind, make_command(port), port, path, n, workdir))
    return (counts[1] - counts[0]) / requests


async def main(requests: int) -> None:
    valgrind = ensure_valgrind()
    sandbox = await start_sandbox()
    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    body = workdir / "body.json"
    # The bare app answers a body the size of the broker's (a sandbox JWT is about 900 bytes).
    body.write_bytes(b'{"access_token": "' + b"x" * 900 + b'", "token_type": "Bearer"}')
    rows = []
    started = time.monotonic()
    try:
        for loop in ("asyncio", "uvloop"):

            def bare(port: int, loop: str = loop, route: str = "dynamic") -> list[str]:
                return [sys.executable, "-c", BARE_APP, loop, str(port), str(body), route]

            def broker(port: int, extra: str = "", loop: str = loop) -> list[str]:
                path = workdir / f"broker-{port}.toml"
                path.write_text(config(sandbox.url, port, extra=f'event_loop = "{loop}"\n{extra}'))
                return [sys.executable, "-m", "broker", "serve", "--config", str(path)]

            baseline = await per_hit(valgrind, bare, "/v1/token/default", requests, workdir)
            static = await per_hit(
                valgrind,
                lambda p, loop=loop: bare(p, loop, "static"),
                "/v1/token/default",
                requests,
                workdir,
            )
            servers = [
                ("bare aiohttp app", baseline),
                ("bare aiohttp app, static route", static),
                (
                    "broker",
                    await per_hit(valgrind, broker, "/v1/token/default", requests, workdir),
                ),
                (
                    "broker, audit off",
                    await per_hit(
                        valgrind,
                        lambda p, loop=loop: broker(p, "audit = false", loop),
                        "/v1/token/default",
                        requests,
                        workdir,
                    ),
                ),
            ]
            for name, count in servers:
                rows.append(
                    {
                        "server": name,
                        "loop": loop,
                        "instructions_per_hit": round(count),
                        "ratio_vs_bare_same_loop": round(baseline / count, 3),
                        "ratio_vs_bare_static_same_loop": round(static / count, 3),
                    }
                )
                print(f"  {name} ({loop}): {count / 1000:.1f}k instructions per hit", flush=True)
    finally:
        await sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(
        "instructions",
        rows,
        {
            "method": (
                f"callgrind Ir of WARMUP+2N minus WARMUP+N requests, N={requests}, "
                f"WARMUP={WARMUP}, {CONNECTIONS} keep-alive connections, PYTHONHASHSEED=0"
            ),
            "ratio": "bare app's instructions per hit / this server's, on the same loop "
            "(the dynamic route /v1/token/{profile}; _static: the route /v1/token/default)",
            "seconds": round(time.monotonic() - started),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    asyncio.run(main(parser.parse_args().requests))
