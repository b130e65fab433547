"""Customer-tenant cache: cache-hit latency with 100,000 cached (tenant, scope) entries against
the same with 10, and the memory each 10,000 entries cost.

    .venv/bin/python bench/tenant_cache.py [--entries 100000] [--samples 20000] [--runs 3]

One broker process serves two customer-tenant profiles: `small` holding 10 entries and `large`
holding `--entries`. Both are filled the way a fetch fills them (an `Entry` with its fetch, its
log and its refresh timer armed; the token a sandbox-minted JWT of about 1.3 KB, the size of a
delegated Graph token), without the upstream round trips, which would only make the fill slow.
The client asks `GET /v1/token/{profile}?tenant=T&scope=S` for random cached keys over one
keep-alive connection, alternating blocks of 500 between the two profiles, so load on a shared
machine and the garbage collector weigh on both alike. Memory: the server's RSS before and
after filling `large`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, report, rss_mb

SCOPES = (
    "https://graph.microsoft.com/.default",
    "https://outlook.office365.com/.default",
    "https://management.azure.com/.default",
)


def keys(n: int) -> list[tuple[str, str]]:
    return [(str(uuid.UUID(int=i // len(SCOPES) + 1)), SCOPES[i % len(SCOPES)]) for i in range(n)]


def _config(tmp: Path, port: int, entries: int) -> str:
    rt = tmp / "rt"
    rt.write_text("0.Abench-refresh-token\n")
    scopes = json.dumps(list(SCOPES))
    profile = """
[profiles.{name}]
credential = "refresh_token"
refresh_token_file = "{rt}"
warm = false
customer_tenants = ["*"]
customer_scopes = {scopes}
max_customer_tokens = {limit}
customer_fetch_rate = 100000
customer_fetch_burst = 1000000
"""
    return (
        f'[server]\nlisten = ["127.0.0.1:{port}"]\naudit = false\nlog_level = "warning"\n'
        '[defaults]\ntenant_id = "partner.example"\n'
        'client_id = "00000000-0000-4000-8000-00000000be4c"\n'
        'authority = "http://127.0.0.1:9"\ngeneratetoken_url = "http://127.0.0.1:9/x"\n'
        + profile.format(name="small", rt=rt, scopes=scopes, limit=10)
        + profile.format(name="large", rt=rt, scopes=scopes, limit=max(entries, 10))
    )


def _fill(cache, n: int) -> None:
    from broker.core.cache import outcomes
    from broker.core.tokens import token_from_response
    from broker.core.upstream import RefreshIds
    from broker.sandbox.state import SandboxState

    state = SandboxState()
    for tenant, scope in keys(n):
        value = state.mint(
            {
                "aud": scope.removesuffix("/.default"),
                "iss": f"https://sts.windows.net/{tenant}/",
                "tid": tenant,
                "appid": "00000000-0000-4000-8000-00000000be4c",
                "oid": str(uuid.uuid4()),
                "amr": ["pwd", "mfa"],
                "scp": "Directory.Read.All Group.ReadWrite.All User.Read.All openid profile",
                "upn": "admin@partner.example",
                "name": "Partner Admin",
                "wids": [str(uuid.uuid4()) for _ in range(6)],
                "xms_tcdt": 1600000000,
                "uti": uuid.uuid4().hex,
                "rh": "0." + uuid.uuid4().hex * 3,
            },
            3600,
        )
        token = token_from_response(
            {"access_token": value, "expires_in": 3599},
            now_mono=time.monotonic(),
            now_wall=time.time(),
        )
        entry = cache.entry(tenant, scope)
        outcomes.succeeded(
            entry, token, time.monotonic(), RefreshIds.new()
        )  # as a landed fetch does


async def _serve(port: int, entries: int) -> None:
    """The broker, both profiles filled; prints its RSS before and after, then serves."""
    from broker.config.listen import Listen
    from broker.config.load import parse_settings
    from broker.daemon.listeners import bind
    from broker.http.app import BROKER, create_app
    from broker.http.server import HttpServer

    with tempfile.TemporaryDirectory() as tmp:
        settings = parse_settings(_config(Path(tmp), port, entries), env={})
        app = create_app(settings)  # audit = false in the config
        await HttpServer(app).start([bind(Listen.tcp("127.0.0.1", port))])  # as the daemon
        broker = app[BROKER]
        _fill(broker.tenants["small"], 10)
        gc.collect()
        before = rss_mb(os.getpid())
        _fill(broker.tenants["large"], entries)
        gc.collect()
        after = rss_mb(os.getpid())
        token_bytes = len(broker.tenants["large"].lookup(*keys(1)[0]).token.value)
        print(json.dumps({"before": before, "after": after, "token_bytes": token_bytes}))
        sys.stdout.flush()
        await asyncio.Event().wait()


async def _client(port: int, entries: int, samples: int) -> dict[str, list[float]]:
    import aiohttp

    small, large = keys(10), keys(entries)
    times: dict[str, list[float]] = {"small": [], "large": []}
    base = f"http://127.0.0.1:{port}/v1/token"
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, headers={"Metadata": "true"}) as s:
        for profile, pool in (("small", small), ("large", large)):  # warm up the connection
            async with s.get(f"{base}/{profile}", params=_q(pool[0])) as r:
                assert r.status == 200, await r.text()
        block = 500
        for _ in range(samples // block):
            for profile, pool in (("small", small), ("large", large)):
                out = times[profile]
                for key in random.choices(pool, k=block):
                    start = time.perf_counter()
                    async with s.get(f"{base}/{profile}", params=_q(key)) as r:
                        await r.read()
                    out.append(time.perf_counter() - start)
    return times


def _q(key: tuple[str, str]) -> dict[str, str]:
    return {"tenant": key[0], "scope": key[1]}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1e6


def one_run(entries: int, samples: int) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--entries", str(entries)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        memory = json.loads(server.stdout.readline())
        times = asyncio.run(_client(port, entries, samples))
    finally:
        server.terminate()
        server.wait()
    return {
        "p50_small": _pct(times["small"], 0.5),
        "p99_small": _pct(times["small"], 0.99),
        "p50_large": _pct(times["large"], 0.5),
        "p99_large": _pct(times["large"], 0.99),
        **memory,
    }


def main(entries: int, samples: int, runs: int) -> None:
    results = [one_run(entries, samples) for _ in range(runs)]
    rows = []
    for r in results:
        rows.append(
            {
                "cached entries": 10,
                "hit p50 (us)": r["p50_small"],
                "hit p99 (us)": r["p99_small"],
                "RSS growth (MB)": "",
            }
        )
        rows.append(
            {
                "cached entries": entries,
                "hit p50 (us)": r["p50_large"],
                "hit p99 (us)": r["p99_large"],
                "RSS growth (MB)": r["after"] - r["before"],
            }
        )
    ratios = sorted(r["p99_large"] / r["p99_small"] for r in results)
    growth = sorted(r["after"] - r["before"] for r in results)
    report(
        "tenant_cache",
        rows,
        {
            "p99 ratio, median of runs (target <= 1.2)": round(ratios[len(ratios) // 2], 2),
            "RSS per 10,000 entries, MB, median (target <= 25)": round(
                growth[len(growth) // 2] * 10_000 / entries, 1
            ),
            "token size (bytes)": results[0]["token_bytes"],
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.entries))
    else:
        main(args.entries, args.samples, args.runs)
