"""Shared bench helpers: run the broker (and a bare aiohttp baseline) as separate processes,
read their memory, print a table and write it as JSON. Benchmarks print figures; they assert
nothing (tests do that)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TENANT = "bench.onmicrosoft.com"
CLIENT_ID = "00000000-0000-4000-8000-00000000be4c"
SECRET = "bench-client-secret-value"

BASELINE_APP = """
import sys
from aiohttp import web
BODY = b'{"access_token": "x", "token_type": "Bearer"}'
async def handle(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/v1/token", handle)
app.router.add_get("/healthz", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def start_sandbox(
    *, lifetimes: dict[str, float] | None = None, latency: dict[str, float] | None = None
):
    """The sandbox upstream in this process, with the bench's app registered."""
    from broker.sandbox import Sandbox

    sandbox = Sandbox()
    sandbox.state.register(TENANT, CLIENT_ID, client_secret=SECRET)
    sandbox.state.lifetimes.update(lifetimes or {})
    sandbox.state.latency.update(latency or {})
    return await sandbox.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def config(sandbox_url: str, port: int, *, extra: str = "", profiles: str | None = None) -> str:
    if profiles is None:
        profiles = "[profiles.default]\n"
    return f"""
[server]
listen = ["127.0.0.1:{port}"]
log_level = "warning"
{extra}
[defaults]
authority = "{sandbox_url}"
generatetoken_url = "{sandbox_url}/v3/generatetoken"
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_env = "BENCH_SECRET"
{profiles}
[mirror]
upstream_base = "{sandbox_url}"
"""


async def start_process(
    args: list[str], *, env: dict[str, str] | None = None, cpu: int | None = None
) -> asyncio.subprocess.Process:
    """A child process. Its stderr (logs, audit lines) goes to a file, as to a journal: an
    unread pipe would fill up and stall it."""
    if cpu is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        args = ["taskset", "-c", str(cpu), *args]
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    return await asyncio.create_subprocess_exec(
        *args, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.DEVNULL, stderr=log
    )


async def wait_healthy(port: int, path: str = "/healthz", timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"nothing healthy on port {port}")
        await asyncio.sleep(0.01)


async def start_broker(
    config_text: str, port: int, *, cpu: int | None = None, python: str = sys.executable
) -> asyncio.subprocess.Process:
    path = Path(tempfile.mkdtemp()) / "broker.toml"
    path.write_text(config_text)
    proc = await start_process(
        [python, "-m", "broker", "serve", "--config", str(path)],
        env={"BENCH_SECRET": SECRET},
        cpu=cpu,
    )
    await wait_healthy(port)
    return proc


async def start_baseline(port: int, *, cpu: int | None = None) -> asyncio.subprocess.Process:
    proc = await start_process([sys.executable, "-c", BASELINE_APP, str(port)], cpu=cpu)
    await wait_healthy(port)
    return proc


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await proc.wait()


def report(name: str, rows: list[dict[str, Any]], notes: dict[str, Any] | None = None) -> None:
    """Print `rows` as a table and write {machine, rows, notes} to bench/results/NAME.json."""
    columns = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    for key, value in (notes or {}).items():
        print(f"{key}: {value}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "notes": notes or {}}, indent=2))
    print(f"(written to {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out})")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
