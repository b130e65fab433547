"""The token cache on its own: single flight, refresh ahead, failure memory, the clock injected.

The fetch function here is a plain coroutine gated by events (the upstream's HTTP side is
covered against the sandbox in test_broker.py).
"""

from __future__ import annotations

import asyncio
import io

import pytest

from broker.config.errors import UpstreamFailing, UpstreamRefused
from broker.core.cache import IDLE_AFTER, Policy, TokenCache
from broker.core.tokens import Token
from broker.observe.logs import make_logger
from broker.observe.metrics import Metrics
from tests.conftest import FakeClock

POLICY = Policy(
    refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, wait_timeout=5, warm=False
)


class Upstream:
    """Counts calls; each call waits for `gate` (when set) and returns a token of `lifetime`."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail_with: Exception | None = None

    async def fetch(self, ids) -> Token:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        now = self.clock.monotonic()
        return Token(f"token-{self.calls}", "Bearer", now, now + self.lifetime, self.clock.time())


def make_cache(clock: FakeClock, upstream: Upstream, policy: Policy = POLICY):
    cache = TokenCache(
        clock=clock, log=make_logger(stream=io.StringIO()), metrics=Metrics(), rand=lambda: 0.0
    )
    return cache, cache.add("p", "aad", upstream.fetch, policy)


async def test_concurrent_cold_callers_share_one_refresh(clock: FakeClock) -> None:
    """200 callers on a cold entry cause one upstream call and all get the same token."""
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    _, entry = make_cache(clock, upstream)
    callers = [asyncio.create_task(entry.get()) for _ in range(200)]
    await upstream.started.wait()
    await asyncio.sleep(0)  # let every caller reach the flight
    assert entry.waiters == 200
    upstream.gate.set()
    results = await asyncio.gather(*callers)
    assert upstream.calls == 1
    assert {token.value for token, _ in results} == {"token-1"}
    assert not any(hit for _, hit in results)


async def test_cache_hits_cause_no_upstream_call(clock: FakeClock) -> None:
    """Once a token is cached, 100 callers get it with no further upstream call."""
    upstream = Upstream(clock)
    _, entry = make_cache(clock, upstream)
    await entry.get()
    results = [await entry.get() for _ in range(100)]
    assert upstream.calls == 1
    assert all(hit for _, hit in results)


async def test_a_caller_that_goes_away_does_not_cancel_the_refresh(clock: FakeClock) -> None:
    """Cancelling the only waiting caller leaves the shared refresh running to completion."""
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    _, entry = make_cache(clock, upstream)
    caller = asyncio.create_task(entry.get())
    await upstream.started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    flight = entry.flight
    assert flight is not None and not flight.done()
    upstream.gate.set()
    await flight
    assert entry.token is not None and entry.token.value == "token-1"
    assert (await entry.get())[1] is True


async def test_refresh_happens_ahead_of_expiry_with_no_caller(clock: FakeClock) -> None:
    """The timer refreshes at expiry - max(60 s, 25 % of 3600 s) = 2700 s after receipt."""
    upstream = Upstream(clock)
    _, entry = make_cache(clock, upstream)
    await entry.get()
    clock.advance(2699)
    await asyncio.sleep(0)
    assert upstream.calls == 1
    clock.advance(1)
    assert entry.flight is not None
    await entry.flight
    assert upstream.calls == 2
    assert entry.token is not None and entry.token.value == "token-2"


async def test_steady_state_callers_never_wait_on_a_slow_refresh(clock: FakeClock) -> None:
    """While a refresh-ahead is in flight (upstream stuck), callers get the cached token."""
    upstream = Upstream(clock)
    _, entry = make_cache(clock, upstream)
    await entry.get()
    upstream.gate = asyncio.Event()
    upstream.started.clear()
    clock.advance(2700)
    await upstream.started.wait()
    results = [await entry.get() for _ in range(50)]
    assert all(hit and token.value == "token-1" for token, hit in results)
    assert entry.status().state == "refreshing"
    upstream.gate.set()
    await entry.flight


async def test_never_serves_a_token_below_min_remaining(clock: FakeClock) -> None:
    """At every second of a token's life, what get() returns has at least 30 s left."""
    upstream = Upstream(clock, lifetime=300)
    policy = Policy(
        refresh_ahead=0.0, min_refresh_margin=0, min_remaining=30, wait_timeout=5, warm=False
    )
    _, entry = make_cache(clock, upstream, policy)
    worst = float("inf")
    for _ in range(900):
        token, _ = await entry.get()
        worst = min(worst, token.remaining(clock.monotonic()))
        clock.advance(1)
    assert worst >= 30
    assert upstream.calls >= 3


async def test_exactly_min_remaining_is_served_and_less_is_refetched(clock: FakeClock) -> None:
    """The boundary: 30 s left is a hit; 29.9 s left makes the caller wait for a new token."""
    upstream = Upstream(clock, lifetime=100)
    policy = Policy(
        refresh_ahead=0.0, min_refresh_margin=0, min_remaining=30, wait_timeout=5, warm=False
    )
    _, entry = make_cache(clock, upstream, policy)
    entry._closed = True  # no timer: only callers drive it here
    await entry.get()
    clock.advance(70)
    token, hit = await entry.get()
    assert hit and token.value == "token-1"
    clock.advance(0.1)
    token, hit = await entry.get()
    assert not hit and token.value == "token-2"


async def test_failures_are_remembered_so_a_crowd_cannot_hammer_upstream(clock: FakeClock) -> None:
    """After a failed refresh, 1000 callers within the backoff get the error with no new call."""
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamFailing(
        "Azure AD answered 500", endpoint="aad", upstream_status=500
    )
    _, entry = make_cache(clock, upstream)
    with pytest.raises(UpstreamFailing):
        await entry.get()
    for _ in range(1000):
        with pytest.raises(UpstreamFailing):
            await entry.get()
    assert upstream.calls == 1
    assert entry.status().state == "failing"


async def test_refusal_reaches_every_concurrent_caller_from_one_call(clock: FakeClock) -> None:
    """50 concurrent callers on a refused credential: one upstream call, 50 refusals."""
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    upstream.fail_with = UpstreamRefused(
        "Azure AD answered 401", endpoint="aad", upstream_status=401
    )
    _, entry = make_cache(clock, upstream)
    callers = [asyncio.create_task(entry.get()) for _ in range(50)]
    await upstream.started.wait()
    upstream.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert upstream.calls == 1
    assert all(isinstance(r, UpstreamRefused) and r.upstream_status == 401 for r in results)


async def test_warm_entries_are_fetched_at_start(clock: FakeClock) -> None:
    """A warm entry fetches on start() with no caller at all."""
    upstream = Upstream(clock)
    warm = Policy(
        refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, wait_timeout=5, warm=True
    )
    cache, entry = make_cache(clock, upstream, warm)
    cache.start()
    assert entry.flight is not None
    await entry.flight
    assert upstream.calls == 1 and entry.status().state == "fresh"


async def test_idle_cold_entries_stop_being_refreshed(clock: FakeClock) -> None:
    """A non-warm entry nobody asked for in IDLE_AFTER seconds lets its token lapse."""
    upstream = Upstream(clock, lifetime=2 * IDLE_AFTER)
    _, entry = make_cache(clock, upstream)
    await entry.get()
    clock.advance(2 * IDLE_AFTER)  # its refresh time passes with no caller since receipt
    await asyncio.sleep(0)
    assert entry.flight is None and upstream.calls == 1


async def test_close_cancels_timers_and_flights(clock: FakeClock) -> None:
    """After close, no timer fires and no flight is left running."""
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    cache, entry = make_cache(clock, upstream)
    caller = asyncio.create_task(entry.get())
    await upstream.started.wait()
    await cache.close()
    await asyncio.gather(caller, return_exceptions=True)
    assert entry.flight is None
    assert clock.next_timer() is None
