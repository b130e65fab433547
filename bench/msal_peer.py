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
import base64
import gc
import heapq
import io
import itertools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, report, rss_mb

SCOPES = (
    "https://graph.microsoft.com/.default",
    "https://outlook.office365.com/.default",
    "https://management.azure.com/.default",
)
CLIENT_ID = "00000000-0000-4000-8000-00000000be4c"
AUTHORITY = "https://login.microsoftonline.com"
HITS = 2000  # in process
WIRE_HITS = 10_000  # over loopback, per profile: a p99 the machine's noise moves less
LIFETIME = 3599  # seconds: what Azure AD gives an app token
NEAR = 240  # seconds left on a near-expiry token: MSAL refreshes below 5 minutes


def tenant(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def token_value(i: int, scope: str, lifetime: float) -> str:
    """A JWT-shaped token of about 1.3 KB (a delegated Graph token's size), distinct per call."""
    now = int(time.time())
    claims = {
        "aud": scope.removesuffix("/.default"),
        "iss": f"https://sts.windows.net/{tenant(i)}/",
        "iat": now,
        "nbf": now,
        "exp": int(now + lifetime),
        "tid": tenant(i),
        "appid": CLIENT_ID,
        "oid": str(uuid.uuid4()),
        "roles": ["Directory.Read.All", "Group.ReadWrite.All", "User.Read.All"],
        "wids": [str(uuid.uuid4()) for _ in range(3)],
        "uti": uuid.uuid4().hex,
        "rh": "0." + uuid.uuid4().hex * 3,
        "xms_tcdt": 1600000000,
    }
    header = b'{"alg":"RS256","typ":"JWT","kid":"bench"}'
    parts = [header, json.dumps(claims).encode(), os.urandom(256)]
    return ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)


def pct(values: list[float], q: float) -> float:
    """The q-quantile in microseconds (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def samples_for(n: int, quick: bool) -> int:
    """Misses and refreshes sampled at n tenants."""
    count = 200 if n <= 1000 else 100 if n <= 10_000 else 30
    return max(10, count // 2) if quick else count


# -- MSAL -------------------------------------------------------------------------------------


class _Answer:
    """What MSAL's http_client interface returns (msal.oauth2cli.http.Response)."""

    def __init__(self, text: str) -> None:
        self.status_code = 200
        self.text = text
        self.headers: dict[str, str] = {}

    def raise_for_status(self) -> None:
        return None


class InProcessHttp:
    """An `http_client` for MSAL: answers discovery and token requests in process. `started`
    is when MSAL last handed it a token request: the upstream call would start there."""

    def __init__(self) -> None:
        self.started = 0.0
        self.lifetime = LIFETIME

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> _Answer:
        tenant_id = url.split("/")[3]
        base = f"{AUTHORITY}/{tenant_id}"
        return _Answer(
            json.dumps(
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                }
            )
        )

    def post(self, url: str, params: Any = None, data: Any = None, **_: Any) -> _Answer:
        self.started = time.perf_counter()
        scope = str((data or {}).get("scope", SCOPES[0])).split()[0]
        body = {"access_token": token_value(0, scope, self.lifetime), "token_type": "Bearer"}
        return _Answer(json.dumps({**body, "expires_in": self.lifetime}))


def msal_child(n: int, quick: bool) -> dict[str, Any]:
    import msal

    http = InProcessHttp()
    samples = samples_for(n, quick)
    near = set(random.sample(range(n), min(samples, n)))  # tenants whose first scope is near expiry
    cache = msal.TokenCache()
    gc.collect()
    before = rss_mb(os.getpid())
    for i in range(n):
        for s, scope in enumerate(SCOPES):
            life = NEAR if (s == 0 and i in near) else LIFETIME
            cache.add(
                {
                    "client_id": CLIENT_ID,
                    "scope": [scope],
                    "token_endpoint": f"{AUTHORITY}/{tenant(i)}/oauth2/v2.0/token",
                    "environment": "login.microsoftonline.com",
                    "response": {
                        "access_token": token_value(i, scope, life),
                        "expires_in": life,
                        "token_type": "Bearer",
                    },
                }
            )
    gc.collect()
    per_token_kb = (rss_mb(os.getpid()) - before) * 1024 / (n * len(SCOPES))

    apps: dict[int, Any] = {}

    def app(i: int) -> Any:
        if i not in apps:
            apps[i] = msal.ConfidentialClientApplication(
                CLIENT_ID,
                client_credential="bench-secret",
                authority=f"{AUTHORITY}/{tenant(i)}",
                token_cache=cache,
                http_client=http,
                instance_discovery=False,
            )
        return apps[i]

    hit_keys = [(random.randrange(n), random.randrange(1, len(SCOPES))) for _ in range(HITS)]
    hit_apps = {i for i, _ in hit_keys}
    for i in hit_apps:
        app(i)
    hits = []
    for i, s in hit_keys:
        a = app(i)
        start = time.perf_counter()
        result = a.acquire_token_for_client([SCOPES[s]])
        hits.append(time.perf_counter() - start)
        assert result.get("token_source") == "cache", result

    def upstream_bound(tenants: list[int]) -> list[float]:
        out = []
        for i in tenants:
            a = app(i)
            start = time.perf_counter()
            result = a.acquire_token_for_client([SCOPES[0]])
            out.append(http.started - start)
            assert result.get("token_source") == "identity_provider", result
        return out

    misses = upstream_bound(list(range(n, n + samples)))  # tenants with nothing cached
    refreshes = upstream_bound(sorted(near))
    return {
        "hit": hits,
        "miss": misses,
        "refresh": refreshes,
        "per_token_kb": per_token_kb,
        "samples": samples,
    }


# -- the broker, in process -------------------------------------------------------------------


class BenchClock:
    """Real time plus an offset the bench moves; timers fire only when the bench says, so it
    knows the instant a refresh falls due."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._timers: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def call_at(self, deadline: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(callback)
        heapq.heappush(self._timers, (deadline, next(self._seq), handle))
        return handle

    def next_due(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def fire_due(self) -> int:
        """Run every timer due by now; how many ran."""
        now, fired = self.monotonic(), 0
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                handle.callback()
                fired += 1
        return fired


class _Handle:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _broker_config(n: int, samples: int) -> str:
    scopes = json.dumps(list(SCOPES))
    return f"""
[server]
listen = ["127.0.0.1:9"]
audit = false
log_level = "warning"
[profiles.peer]
tenant_id = "partner.example"
client_id = "{CLIENT_ID}"
authority = "{AUTHORITY}"
credential = "client_secret"
client_secret_env = "BENCH_SECRET"
warm = false
customer_tenants = ["*"]
customer_scopes = {scopes}
max_customer_tokens = {n * len(SCOPES) + samples + 16}
customer_fetch_rate = 100000
customer_fetch_burst = 1000000
upstream_concurrency = 1024
"""


async def broker_child(n: int, quick: bool) -> dict[str, Any]:
    from broker.config.load import parse_settings
    from broker.core.credentials import make_credential
    from broker.core.tenants import TenantCache
    from broker.core.tokens import Token
    from broker.core.upstream import Upstream
    from broker.observe.logs import make_logger
    from broker.observe.metrics import Metrics
    from broker.observe.redact import Redactor

    samples = samples_for(n, quick)
    clock = BenchClock()

    class StubUpstream(Upstream):
        """Upstream up to the call: notes when a token request would go out, and answers it
        with a fresh token at once."""

        started = 0.0
        calls: list[float] = []  # when each request would have gone out
        lifetime = float(LIFETIME)

        async def azure_ad_token(self, url: str, form: dict[str, str], **_: Any) -> Any:
            StubUpstream.started = time.perf_counter()
            StubUpstream.calls.append(StubUpstream.started)
            now = clock.monotonic()
            value = token_value(0, form["scope"], self.lifetime)
            token = Token(value, "Bearer", now, now + self.lifetime, clock.time())
            return token, {"access_token": value}

    settings = parse_settings(_broker_config(n, samples), env={"BENCH_SECRET": "bench-secret"})
    profile = settings.profiles["peer"]
    log = make_logger(level="warning", stream=io.StringIO())
    metrics = Metrics()
    upstream = StubUpstream(None, clock, metrics=metrics, redactor=Redactor())  # type: ignore[arg-type]
    cache = TenantCache(
        profile,
        make_credential(profile, log),
        upstream,
        clock=clock,
        log=log,
        metrics=metrics,
        rand=random.random,
    )
    near = set(random.sample(range(n), min(samples, n)))
    gc.collect()
    before = rss_mb(os.getpid())
    for i in range(n):
        for s, scope in enumerate(SCOPES):  # filled the way callers fill it: a miss each
            StubUpstream.lifetime = 600.0 if (s == 0 and i in near) else float(LIFETIME)
            await cache.get(tenant(i), scope)
    StubUpstream.lifetime = float(LIFETIME)
    gc.collect()
    per_token_kb = (rss_mb(os.getpid()) - before) * 1024 / (n * len(SCOPES))

    hits = []
    for _ in range(HITS):
        t, scope = tenant(random.randrange(n)), SCOPES[random.randrange(1, len(SCOPES))]
        start = time.perf_counter()
        token = cache.entry(t, scope).peek()
        hits.append(time.perf_counter() - start)
        assert token is not None

    misses = []
    for i in range(n, n + samples):
        start = time.perf_counter()
        entry = cache.entry(tenant(i), SCOPES[0])
        assert entry.peek() is None
        await entry.get()
        misses.append(StubUpstream.started - start)

    # Near-expiry refreshes: the 600 s tokens fall due first, as time moves on. Two due
    # within a millisecond go out together (one timer): the first one's time is the sample.
    refreshes: list[float] = []
    refreshed = 0
    while refreshed < len(near):
        due = clock.next_due()
        assert due is not None
        clock.offset += max(0.0, due - clock.monotonic())
        StubUpstream.calls.clear()
        start = time.perf_counter()
        clock.fire_due()
        for _ in range(10):  # the flights run once the loop turns
            if StubUpstream.calls:
                break
            await asyncio.sleep(0)
        assert StubUpstream.calls, "no refresh went out"
        refreshes.append(StubUpstream.calls[0] - start)
        for _ in range(10):  # let them land
            await asyncio.sleep(0)
        refreshed += len(StubUpstream.calls)
    await cache.close()
    return {
        "hit": hits,
        "miss": misses,
        "refresh": refreshes,
        "per_token_kb": per_token_kb,
        "samples": samples,
    }


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
        print(json.dumps(msal_child(args.n, args.quick)))
    elif args.child == "broker":
        print(json.dumps(asyncio.run(broker_child(args.n, args.quick))))
    else:
        default = "10,1000,10000" if args.quick else "10,1000,10000,100000"
        chosen = [int(x) for x in (args.tenants or default).split(",")]
        main(chosen, args.quick)
