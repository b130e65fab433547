"""bench/msal_peer.py's broker side, run in a process of its own (`--child broker`): one
`TenantCache` filled with N tenants x 3 scopes through its miss path, its upstream stopped at
the point the request would go out (`StubUpstream`), its timers fired by the bench's clock."""

from __future__ import annotations

import asyncio
import gc
import heapq
import io
import itertools
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from bench.common import rss_mb
from bench.peer_common import (
    AUTHORITY,
    CLIENT_ID,
    HITS,
    LIFETIME,
    SCOPES,
    samples_for,
    tenant,
    token_value,
)


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
