"""The peer: MSAL Python's own token cache against the broker's, on the same N customer tenants
x 3 scopes with 1.3 KB tokens, at 10 / 1,000 / 10,000 / 100,000 tenants.

    .venv/bin/python bench/msal_peer.py [--quick] [--tenants 10,1000,10000,100000]
    make bench-peer

What each figure includes:
- MSAL, every figure: the in-process call `ConfidentialClientApplication.acquire_token_for_client`
  (one app per tenant, all sharing one `msal.TokenCache`, as a multi-tenant daemon would hold
  them). Its HTTP goes to an in-process `http_client` (MSAL's public parameter for one): nothing
  leaves the process. Hit: the whole call. Miss and near-expiry refresh: from the call to the
  moment MSAL hands its token request to the http client (the upstream call would start).
- Broker, hit over loopback: a `GET /v1/token/{profile}?tenant=T&scope=S` round trip from an
  aiohttp client on one keep-alive connection to a broker process (bench/tenant_cache.py's server,
  every defence on, audit off): what a local tool pays. The same server holds a 10-entry
  profile, asked in alternating blocks: the flatness target compares the two in one run.
- Broker, hit in process: `TenantCache.entry(T, S).peek()`, what `Desk.serve` does for a hit.
- Broker, miss: `TenantCache.entry(T, S)` (a new entry) then `Entry.get()`, timed to the moment
  the fetch calls `Upstream.azure_ad_token` (the upstream call would start): entry, flight task,
  failure memory, fan-out limit, credential form.
- Broker, near-expiry refresh: from the moment the refresh timer falls due (the bench's clock
  fires it) to the same upstream call: the scheduler, the flight, the same fetch path. Callers
  never wait on it (they keep the cached token), unlike MSAL's, where the caller does.
- Near expiry: MSAL takes a token with under 5 minutes left as expired (Azure AD's app tokens
  carry no `refresh_in`), so the sampled keys hold 4-minute tokens; the broker's sampled keys
  hold 10-minute tokens, whose refresh-ahead falls due before the others'.
- Memory per token: the process's RSS growth while the cache is filled with N x 3 tokens (the
  token strings included), divided by the tokens. Each side fills in its own fresh process.

Sampling: hits 2,000 per size in process, 10,000 over loopback (random cached keys); misses
and refreshes a fixed number of distinct keys per size (the `samples` column), because MSAL's
take 0.4-2 s each at 100,000 tenants: p99 of a few dozen samples is close to their maximum.
`--quick` stops at 10,000 tenants and halves the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, report
from bench.peer_common import LIFETIME, SCOPES, WIRE_HITS, pct, token_value

# -- the broker over loopback: bench/tenant_cache.py's server ---------------------------------


def loopback_hits(n: int, samples: int) -> dict[str, float]:
    from bench import tenant_cache

    entries = n * len(SCOPES)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, tenant_cache.__file__, "--serve", str(port), "--entries", str(entries)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        json.loads(server.stdout.readline())
        times = asyncio.run(tenant_cache._client(port, entries, samples))
    finally:
        server.terminate()
        server.wait()
    return {
        "p50": pct(times["large"], 0.5),
        "p99": pct(times["large"], 0.99),
        "p99 of 10 entries": pct(times["small"], 0.99),  # the same server, blocks alternating
    }


# -- the table --------------------------------------------------------------------------------


def child(side: str, n: int, quick: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, "--n", str(n)] + (["--quick"] if quick else []),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def main(sizes: list[int], quick: bool) -> None:
    """Each size: MSAL and the broker in process, each in a fresh process, then the broker over
    loopback; prints the table and the targets' ratios (largest size against smallest)."""
    rows: list[dict[str, Any]] = []
    flat: dict[str, dict[int, float]] = {"miss": {}, "refresh": {}, "loopback p99": {}}
    memory: dict[str, float] = {}
    for n in sizes:
        m, b = child("msal", n, quick), child("broker", n, quick)
        wire = loopback_hits(n, WIRE_HITS // 2 if quick else WIRE_HITS)
        flat["miss"][n] = pct(b["miss"], 0.5)
        flat["refresh"][n] = pct(b["refresh"], 0.5)
        flat["loopback p99"][n] = wire["p99"] / wire["p99 of 10 entries"]
        memory = {"msal": m["per_token_kb"], "broker": b["per_token_kb"]}
        for name, r in (("MSAL (in process)", m), ("broker (in process)", b)):
            rows.append(
                {
                    "tenants": n,
                    "side": name,
                    "hit p50 us": pct(r["hit"], 0.5),
                    "hit p99 us": pct(r["hit"], 0.99),
                    "miss p50 us": pct(r["miss"], 0.5),
                    "miss p99 us": pct(r["miss"], 0.99),
                    "refresh p50 us": pct(r["refresh"], 0.5),
                    "refresh p99 us": pct(r["refresh"], 0.99),
                    "samples": r["samples"],
                    # RSS moves in pages: below 1,000 tenants the growth is too small to read.
                    "KB per token": round(r["per_token_kb"], 2) if n >= 1000 else "",
                }
            )
        rows.append(
            {
                "tenants": n,
                "side": "broker (loopback HTTP)",
                "hit p50 us": wire["p50"],
                "hit p99 us": wire["p99"],
                **dict.fromkeys(("miss p50 us", "miss p99 us", "refresh p50 us"), ""),
                "refresh p99 us": "",
                "samples": WIRE_HITS // 2 if quick else WIRE_HITS,
                "KB per token": "",
            }
        )
        print(f"({n:,} tenants done)", file=sys.stderr)
    lo, hi = sizes[0], sizes[-1]
    notes = {
        f"broker miss p50, {hi:,} / {lo:,} tenants (target <= 2)": round(
            flat["miss"][hi] / flat["miss"][lo], 2
        ),
        f"broker refresh p50, {hi:,} / {lo:,} tenants (target <= 2)": round(
            flat["refresh"][hi] / flat["refresh"][lo], 2
        ),
        f"broker loopback hit p99, {hi:,} tenants / 10 entries, same server (target <= 1.2)": round(
            flat["loopback p99"][hi], 2
        ),
        f"broker / MSAL memory per token, {hi:,} tenants (target <= 1)": round(
            memory["broker"] / memory["msal"], 2
        ),
        "token size (bytes)": len(token_value(0, SCOPES[0], LIFETIME)),
        "msal": _msal_version(),
    }
    report("msal_peer", rows, notes)


def _msal_version() -> str:
    import msal

    return str(msal.__version__)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="up to 10,000 tenants, fewer samples")
    parser.add_argument("--tenants", default=None, help="comma-separated sizes")
    parser.add_argument("--child", choices=["msal", "broker"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "msal":
        from bench.peer_msal import msal_child

        print(json.dumps(msal_child(args.n, args.quick)))
    elif args.child == "broker":
        from bench.peer_broker import broker_child

        print(json.dumps(asyncio.run(broker_child(args.n, args.quick))))
    else:
        default = "10,1000,10000" if args.quick else "10,1000,10000,100000"
        chosen = [int(x) for x in (args.tenants or default).split(",")]
        main(chosen, args.quick)
