"""The token cache on its own: single flight, refresh ahead, failure memory, the clock injected;
and, beyond get(), the peek() hit path (what /v1 serves through), forced refreshes, idleness,
the refresh_failed / token_refreshed log events and the status a caller sees.

The fetch function here is a plain coroutine gated by events (the upstream's HTTP side is
covered against the sandbox in test_broker.py).
"""

from __future__ import annotations

import asyncio
import gc
import io
import json

import pytest

from broker.core.cache import IDLE_AFTER, Policy, TokenCache
from broker.core.errors import UpstreamFailing, UpstreamRefused, UpstreamTimeout
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


# -- beyond get(): peek() hits, forced refreshes, idleness, the log events, status -------------


EXACT = Policy(
    refresh_ahead=0.0, min_refresh_margin=0, min_remaining=30, wait_timeout=5, warm=False
)


class Cache:
    """A TokenCache whose log lines can be read back as dicts."""

    def __init__(self, clock: FakeClock, rand: float = 0.0) -> None:
        self.stream = io.StringIO()
        self.metrics = Metrics()
        self.cache = TokenCache(
            clock=clock,
            log=make_logger(stream=self.stream),
            metrics=self.metrics,
            rand=lambda: rand,
        )

    def events(self, name: str) -> list[dict]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [e for e in lines if e["event"] == name]

    def counted(self, kind: str, outcome: str) -> float:
        labels = {"profile": "p", "kind": kind, "outcome": outcome}
        value = self.metrics.registry.get_sample_value("broker_refreshes_total", labels)
        return float(value or 0.0)


def entry_with(clock: FakeClock, upstream: Upstream, policy: Policy = POLICY, rand: float = 0.0):
    c = Cache(clock, rand)
    return c, c.cache.add("p", "aad", upstream.fetch, policy)


async def test_peek_serves_exactly_min_remaining_and_nothing_less(clock: FakeClock) -> None:
    upstream = Upstream(clock, lifetime=100)
    _, entry = entry_with(clock, upstream, EXACT)
    assert entry.peek() is None  # cold: nothing to peek at
    entry._closed = True  # no timer: only callers drive it here
    await entry.get()
    clock.advance(70)
    token = entry.peek()
    assert token is not None and token.value == "token-1"
    clock.advance(0.1)
    assert entry.peek() is None
    assert upstream.calls == 1  # peek never fetches


async def test_peeks_count_as_use_so_a_busy_entry_never_goes_idle(clock: FakeClock) -> None:
    """Callers served by peek() keep a non-warm entry refreshed in the background."""
    upstream = Upstream(clock, lifetime=2 * IDLE_AFTER)
    _, entry = entry_with(clock, upstream)
    await entry.get()  # refresh due at 0.75 x 7200 = 5400 s
    clock.advance(5000)
    assert entry.peek() is not None
    clock.advance(400)
    assert entry.flight is not None  # 400 s since the last use: not idle
    await entry.flight
    assert upstream.calls == 2


async def test_a_forced_refresh_counts_as_use(clock: FakeClock) -> None:
    """A non-warm entry last asked for long ago, then refreshed by force, is kept fresh."""
    upstream = Upstream(clock, lifetime=IDLE_AFTER)
    _, entry = entry_with(clock, upstream)
    await entry.get()
    clock.advance(2700)  # the refresh-ahead timer: 2700 s since the last use, not idle yet
    await entry.flight
    clock.advance(300)
    token = await entry.refresh()  # 3000 s since the last get()
    assert token.value == "token-3" and upstream.calls == 3
    clock.advance(2700)  # token-3's refresh time: 5700 s since get(), 2700 since refresh()
    assert entry.flight is not None
    assert (await entry.flight).value == "token-4"


async def test_an_entry_idle_for_exactly_idle_after_is_still_refreshed(clock: FakeClock) -> None:
    upstream = Upstream(clock, lifetime=IDLE_AFTER / 0.75)
    _, entry = entry_with(clock, upstream)
    await entry.get()
    clock.advance(IDLE_AFTER)  # the refresh timer fires exactly IDLE_AFTER after the last use
    assert entry.flight is not None
    await entry.flight
    assert upstream.calls == 2


async def test_a_forced_refresh_joins_the_flight_in_progress(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    _, entry = entry_with(clock, upstream)
    first = asyncio.create_task(entry.get())
    await upstream.started.wait()
    forced = asyncio.create_task(entry.refresh())
    await asyncio.sleep(0)
    upstream.gate.set()
    (token, hit), again = await first, await forced
    assert upstream.calls == 1 and again is token and not hit


async def test_refresh_failed_event_names_what_failed_and_when_it_is_retried(
    clock: FakeClock,
) -> None:
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    upstream.fail_with = UpstreamFailing(
        "Azure AD answered 503",
        endpoint="aad",
        upstream_status=503,
        correlation_id="corr-1",
        aadsts=50196,
        trace_id="trace-1",
    )
    c, entry = entry_with(clock, upstream, rand=0.5)
    caller = asyncio.create_task(entry.get())
    await upstream.started.wait()
    clock.advance(1.25)  # the attempt takes 1.25 s
    upstream.gate.set()
    with pytest.raises(UpstreamFailing):
        await caller
    (event,) = c.events("refresh_failed")
    assert event == {
        "profile": "p",
        "kind": "aad",
        "correlation_id": "corr-1",
        "endpoint": "aad",
        "error": "upstream_failing",
        "upstream_status": 503,
        "message": "Azure AD answered 503",
        "aadsts": 50196,
        "trace_id": "trace-1",
        "failures_in_row": 1,
        "retry_in_s": 2.0,  # the draw (0.5 s) is below the failure memory
        "serving_cached": False,
        "duration_ms": 1250.0,
        "event": "refresh_failed",
        "level": "warning",
        "timestamp": event["timestamp"],
    }
    assert entry.retry_at == clock.monotonic() + 2.0
    assert c.counted("aad", "upstream_failing") == 1
    assert entry.calls == {"upstream_failing": 1}


async def test_refresh_failed_without_its_own_correlation_id_logs_the_refresh_s(
    clock: FakeClock,
) -> None:
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamRefused("Azure AD answered 401", endpoint="aad")
    c, entry = entry_with(clock, upstream)
    with pytest.raises(UpstreamRefused):
        await entry.get()
    (event,) = c.events("refresh_failed")
    assert event["correlation_id"] and len(event["correlation_id"]) >= 32
    assert event["retry_in_s"] == 15.0 and event["failures_in_row"] == 1


async def test_refresh_failed_says_when_the_cached_token_is_still_served(
    clock: FakeClock,
) -> None:
    upstream = Upstream(clock)
    c, entry = entry_with(clock, upstream)
    await entry.get()
    upstream.fail_with = UpstreamFailing(
        "Azure AD answered 500",
        endpoint="aad",
        aadsts=7000215,
        trace_id="t-1",
        correlation_id="c-1",
    )
    clock.advance(2700)
    with pytest.raises(UpstreamFailing):
        await entry.flight
    (event,) = c.events("refresh_failed")
    assert event["serving_cached"] is True and event["failures_in_row"] == 1
    status = entry.status()
    assert status.state == "stale" and status.servable and status.failures == 1
    assert status.last_error == {
        "code": "upstream_failing",
        "message": "Azure AD answered 500",
        "upstream_status": None,
        "endpoint": "aad",
        "aadsts": 7000215,
        "trace_id": "t-1",
        "correlation_id": "c-1",
        "since": clock.time(),  # the first failure of the streak (for `doctor`)
    }
    assert status.next_attempt_in == 2.0
    token, hit = await entry.get()  # callers keep the cached token meanwhile
    assert hit and token.value == "token-1"


async def test_failures_in_a_row_count_up_and_reset_on_success(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamFailing("Azure AD answered 500", endpoint="aad")
    c, entry = entry_with(clock, upstream)
    for expected in (1, 2, 3):
        with pytest.raises(UpstreamFailing):
            await entry.get()
        assert entry.failures == expected
        clock.advance(entry.retry_at - clock.monotonic())
        if entry.flight is not None:  # the retry timer fired
            with pytest.raises(UpstreamFailing):
                await entry.flight
            break
    upstream.fail_with = None
    clock.advance(60)
    if entry.flight is not None:
        await entry.flight
    token, _ = await entry.get()
    assert entry.failures == 0 and entry.last_error is None
    assert [e["failures_in_row"] for e in c.events("refresh_failed")] == list(
        range(1, len(c.events("refresh_failed")) + 1)
    )
    assert entry.status().state == "fresh" and token.value.startswith("token-")


async def test_the_retry_timer_fetches_again_after_the_backoff(clock: FakeClock) -> None:
    """Warm entry, failing upstream: the timer retries at retry_at, not before."""
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamRefused("Azure AD answered 401", endpoint="aad")
    warm = Policy(
        refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, wait_timeout=5, warm=True
    )
    c, entry = entry_with(clock, upstream, warm)
    c.cache.start()
    with pytest.raises(UpstreamRefused):
        await entry.flight
    assert clock.next_timer() == clock.monotonic() + 15.0
    clock.advance(14.9)
    assert entry.flight is None
    upstream.fail_with = None
    clock.advance(0.1)
    assert entry.flight is not None
    token = await entry.flight
    assert token.value == "token-2" and entry.status().state == "fresh"


async def test_token_refreshed_event_says_when_the_next_refresh_is(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    c, entry = entry_with(clock, upstream)
    await entry.get()
    (event,) = c.events("token_refreshed")
    assert event["lifetime_s"] == 3600 and event["next_refresh_in_s"] == 2700.0
    assert event["duration_ms"] == 0.0 and event["expires_on"] == entry.token.expires_on
    assert event["correlation_id"] == entry.token_correlation_id
    assert c.counted("aad", "ok") == 1 and entry.calls == {"ok": 1}
    assert clock.next_timer() == clock.monotonic() + 2700


async def test_an_unchanged_token_from_a_polled_source_is_not_counted_again(
    clock: FakeClock,
) -> None:
    """A file source handing back the same Token: re-armed at the poll interval, no new
    'refreshed' event or count."""
    now = clock.monotonic()
    same = Token("file-token", "Bearer", now, now + 3600, clock.time())

    async def fetch(ids) -> Token:
        return same

    c = Cache(clock)
    polled = Policy(
        refresh_ahead=0.25,
        min_refresh_margin=60,
        min_remaining=30,
        wait_timeout=5,
        warm=True,
        poll_interval=10,
    )
    entry = c.cache.add("p", "aad", fetch, polled)
    c.cache.start()
    await entry.flight
    assert clock.next_timer() == now + 10
    clock.advance(10)
    await entry.flight
    assert len(c.events("token_refreshed")) == 1 and entry.calls == {"ok": 1}
    assert clock.next_timer() == now + 20


async def test_a_nearly_expired_source_token_is_not_refetched_in_a_busy_loop(
    clock: FakeClock,
) -> None:
    upstream = Upstream(clock, lifetime=31)
    _, entry = entry_with(clock, upstream, EXACT)
    await entry.get()
    assert clock.next_timer() == clock.monotonic() + 1.0  # MIN_REFRESH_INTERVAL


async def test_a_crashing_fetch_is_a_logged_internal_error_never_its_text(
    clock: FakeClock,
) -> None:
    async def fetch(ids) -> Token:
        raise KeyError("s3cr3t-detail")

    c = Cache(clock)
    entry = c.cache.add("p", "aad", fetch, POLICY)
    with pytest.raises(UpstreamFailing) as raised:
        await entry.get()
    assert str(raised.value.message) == "internal error (KeyError)"
    assert raised.value.endpoint == "aad" and raised.value.correlation_id
    assert "s3cr3t-detail" not in raised.value.message
    assert len(c.events("refresh_crashed")) == 1 and entry.failures == 1


async def test_a_caller_waits_no_longer_than_wait_timeout(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    short = Policy(
        refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, wait_timeout=0.05, warm=False
    )
    _, entry = entry_with(clock, upstream, short)
    with pytest.raises(UpstreamTimeout) as raised:
        await entry.get()
    assert "no token within 0.05 s" in raised.value.message and entry.waiters == 0
    assert raised.value.endpoint == "aad"
    assert entry.flight is not None  # the refresh goes on
    upstream.gate.set()
    await entry.flight


async def test_a_token_that_can_never_be_served_is_a_failure_with_backoff(
    clock: FakeClock,
) -> None:
    upstream = Upstream(clock, lifetime=20)
    _, entry = entry_with(clock, upstream, EXACT)
    expected = "the new token has 20 s left, less than min_remaining (30 s): it can never be served"
    c, entry = entry_with(clock, upstream, EXACT)
    with pytest.raises(UpstreamFailing) as raised:
        await entry.get()
    assert raised.value.message == expected and raised.value.endpoint == "aad"
    # the caller is told the refresh's own correlation id (it is in the error answer)
    (failed,) = c.events("refresh_failed")
    assert raised.value.correlation_id and raised.value.correlation_id == failed["correlation_id"]
    assert entry.token is None and entry.failures == 1
    with pytest.raises(UpstreamFailing):  # remembered: no second call within the backoff
        await entry.get()
    assert upstream.calls == 1 and entry.status().state == "failing"


async def test_status_of_a_fresh_entry(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    assert entry.status().state == "empty" and entry.status().expires_in is None
    await entry.get()
    clock.advance(100)
    status = entry.status()
    assert (status.profile, status.kind, status.state) == ("p", "aad", "fresh")
    assert status.expires_in == 3500.0 and status.next_attempt_in == 2600.0
    assert status.expires_on == entry.token.expires_on and status.servable
    assert status.calls == {"ok": 1} and status.waiters == 0 and status.last_error is None


async def test_invalidate_drops_only_the_token_it_names(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    first, _ = await entry.get()
    other = Token("other", "Bearer", 0, 10_000, 0)
    entry.invalidate(other)
    assert entry.token is first
    entry.invalidate(first)
    token, hit = await entry.get()
    assert not hit and token.value == "token-2"


async def test_retire_stops_the_timer_and_forgets_the_profile(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    c, entry = entry_with(clock, upstream)
    other = c.cache.add("q", "aad", Upstream(clock).fetch, POLICY)
    await entry.get()
    await other.get()
    c.cache.retire("p")
    assert c.cache.entry("p", "aad") is None and c.cache.entry("q", "aad") is other
    assert entry.next_at is None
    clock.advance(2700)
    assert entry.flight is None and upstream.calls == 1
    assert other.flight is not None
    await other.flight
    assert [s.profile for s in c.cache.snapshot()] == ["q"]


async def test_start_fetches_only_the_named_profiles_warm_entries(clock: FakeClock) -> None:
    warm = Policy(
        refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, wait_timeout=5, warm=True
    )
    c = Cache(clock)
    a, b = Upstream(clock), Upstream(clock)
    ea = c.cache.add("a", "aad", a.fetch, warm)
    eb = c.cache.add("b", "aad", b.fetch, warm)
    c.cache.start("b")
    assert ea.flight is None and eb.flight is not None
    await eb.flight
    c.cache.start("b")  # has a token already: no second fetch
    assert eb.flight is None and b.calls == 1
    await c.cache.close()


# -- the log events' figures, to their decimal ---------------------------------------------------


async def test_token_refreshed_event_gives_duration_expiry_and_next_refresh_to_the_letter() -> None:
    """An attempt of 1.23456 s, a jitter draw of 0.123 (3.69 s off the 2700 s refresh time):
    duration and next refresh in tenths, expiry as epoch and as UTC text."""
    clock = FakeClock(wall_start=1_800_000_000.0)
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    c, entry = entry_with(clock, upstream, rand=0.123)
    caller = asyncio.create_task(entry.get())
    await upstream.started.wait()
    clock.advance(1.23456)
    upstream.gate.set()
    await caller
    (event,) = c.events("token_refreshed")
    assert event == {
        "profile": "p",
        "kind": "aad",
        "correlation_id": entry.token_correlation_id,
        "duration_ms": 1234.6,
        "lifetime_s": 3600,
        "expires_on": 1_800_003_601,
        "expires_at": "2027-01-15T09:00:01Z",
        "next_refresh_in_s": 2696.3,
        "event": "token_refreshed",
        "level": "info",
        "timestamp": event["timestamp"],
    }


async def test_refresh_failed_event_gives_retry_and_duration_in_tenths(clock: FakeClock) -> None:
    """Upstream asks for 2.34 s (Retry-After) after an attempt of 0.45678 s."""
    upstream = Upstream(clock)
    upstream.gate = asyncio.Event()
    upstream.fail_with = UpstreamFailing("Azure AD answered 429", endpoint="aad", retry_after=2.34)
    c, entry = entry_with(clock, upstream)
    caller = asyncio.create_task(entry.get())
    await upstream.started.wait()
    clock.advance(0.45678)
    upstream.gate.set()
    with pytest.raises(UpstreamFailing) as raised:
        await caller
    (event,) = c.events("refresh_failed")
    assert (event["retry_in_s"], event["duration_ms"]) == (2.3, 456.8)
    assert raised.value.retry_after == 2.34


@pytest.mark.parametrize(
    ("asked", "told"),
    [(None, None), (1.0, 2.0), (30.0, 30.0), (1000.0, 600.0)],
)
async def test_callers_are_told_the_retry_delay_used_only_when_upstream_asked_for_one(
    clock: FakeClock, asked: float | None, told: float | None
) -> None:
    """A Retry-After below the 2 s failure memory or above the 600 s cap is told as the
    delay actually used; an error upstream gave no Retry-After for gets none."""
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamFailing("Azure AD answered 503", endpoint="aad", retry_after=asked)
    _, entry = entry_with(clock, upstream)
    with pytest.raises(UpstreamFailing) as raised:
        await entry.get()
    assert raised.value.retry_after == told


async def test_the_retries_of_one_refresh_log_one_correlation_id(clock: FakeClock) -> None:
    """Errors without their own correlation id are logged under the refresh's, the same one
    the token that finally comes is logged and kept under."""
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamFailing("Azure AD answered 500", endpoint="aad")
    c, entry = entry_with(clock, upstream)
    for _ in range(2):
        with pytest.raises(UpstreamFailing):
            await entry.get()
        clock.advance(entry.retry_at - clock.monotonic())
        if entry.flight is not None:
            with pytest.raises(UpstreamFailing):
                await entry.flight
    upstream.fail_with = None
    clock.advance(entry.retry_at - clock.monotonic())
    if entry.flight is not None:
        await entry.flight
    else:
        await entry.get()
    ids = {e["correlation_id"] for e in c.events("refresh_failed")}
    (refreshed,) = c.events("token_refreshed")
    assert ids == {refreshed["correlation_id"]} == {entry.token_correlation_id}
    assert isinstance(refreshed["correlation_id"], str) and len(refreshed["correlation_id"]) >= 32


async def test_attempt_outcomes_are_counted_one_by_one(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    upstream.fail_with = UpstreamFailing("Azure AD answered 500", endpoint="aad")
    c, entry = entry_with(clock, upstream)
    for _ in range(3):
        with pytest.raises(UpstreamFailing):
            await entry.get()
        clock.advance(60)
        if entry.flight is not None:
            with pytest.raises(UpstreamFailing):
                await entry.flight
    failures = entry.calls["upstream_failing"]
    assert failures >= 3 and c.counted("aad", "upstream_failing") == failures
    upstream.fail_with = None
    clock.advance(60)
    for _ in range(2):
        if entry.flight is not None:
            await entry.flight
        await entry.refresh()
    assert entry.status().calls == {"upstream_failing": failures, "ok": upstream.calls - failures}
    assert entry.calls["ok"] >= 2 and c.counted("aad", "ok") == entry.calls["ok"]


# -- the timer never starts a second flight, and stops for good at retire / close ---------------


async def test_the_refresh_timer_joins_a_forced_refresh_in_flight(clock: FakeClock) -> None:
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    await entry.get()  # refresh-ahead timer at +2700 s
    upstream.gate, upstream.started = asyncio.Event(), asyncio.Event()
    clock.advance(2600)
    forced = asyncio.create_task(entry.refresh())
    await upstream.started.wait()
    assert upstream.calls == 2
    clock.advance(100)  # the timer fires while the forced refresh is in flight
    assert upstream.calls == 2
    upstream.gate.set()
    assert (await forced).value == "token-2" and upstream.calls == 2


async def test_retiring_a_cold_entry_is_quiet(clock: FakeClock) -> None:
    c, entry = entry_with(clock, Upstream(clock))
    c.cache.retire("p")  # never asked for: no timer to stop
    assert entry.next_at is None and clock.next_timer() is None


async def test_a_refresh_in_flight_at_retire_still_serves_its_callers_and_arms_nothing(
    clock: FakeClock,
) -> None:
    """Retired mid-flight: the callers waiting get the token; the retired entry then never
    refreshes again (no timer), however long the clock runs."""
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    await entry.get()
    assert clock.next_timer() is not None
    upstream.gate, upstream.started = asyncio.Event(), asyncio.Event()
    forced = asyncio.create_task(entry.refresh())
    await upstream.started.wait()
    entry.retire()
    assert clock.next_timer() is None and entry.next_at is None
    upstream.gate.set()
    assert (await forced).value == "token-2"
    assert clock.next_timer() is None and entry.next_at is None
    clock.advance(10 * 3600)
    assert entry.flight is None and upstream.calls == 2


async def test_close_returns_once_the_refresh_in_flight_has_stopped(clock: FakeClock) -> None:
    stopped: list[str] = []
    began, release = asyncio.Event(), asyncio.Event()

    async def fetch(ids) -> Token:
        began.set()
        try:
            await release.wait()
        finally:
            stopped.append("fetch ended")
        raise AssertionError("never released")

    c = Cache(clock)
    entry = c.cache.add("p", "aad", fetch, POLICY)
    caller = asyncio.create_task(entry.get())
    await began.wait()
    flight = entry.flight
    assert flight is not None
    await entry.close()
    assert stopped == ["fetch ended"] and flight.cancelled()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)


async def test_a_closed_entry_never_arms_a_timer_again(clock: FakeClock) -> None:
    """A caller served after close (a request finishing during shutdown) gets its token, but
    nothing refreshes it in the background any more."""
    upstream = Upstream(clock)
    c, entry = entry_with(clock, upstream)
    await entry.get()
    await c.cache.close()
    assert clock.next_timer() is None
    entry.invalidate(entry.token)
    token, hit = await entry.get()
    assert token.value == "token-2" and not hit
    assert clock.next_timer() is None and entry.next_at is None
    clock.advance(10 * 3600)
    assert entry.flight is None and upstream.calls == 2


# -- a remembered failure, and a token too short-lived to serve ----------------------------------


def test_an_upstream_error_is_immutable_and_copied_with_another_retry_after() -> None:
    """One error is remembered and told to many callers: nobody may change it under the others;
    `with_retry_after` gives a copy (the same error in every other respect)."""
    error = UpstreamFailing("busy", endpoint="aad", retry_after=100, correlation_id="c-1")
    with pytest.raises(AttributeError, match="immutable"):
        error.retry_after = 5
    with pytest.raises(AttributeError, match="immutable"):
        error.message = "other"
    copy = error.with_retry_after(5)
    assert copy is not error and type(copy) is UpstreamFailing
    assert (copy.retry_after, error.retry_after) == (5, 100)
    assert (str(copy), copy.message, copy.correlation_id, copy.code, copy.status) == (
        "busy",
        "busy",
        "c-1",
        "upstream_failing",
        503,
    )


async def test_the_callers_of_one_failed_flight_each_get_their_own_error(
    clock: FakeClock,
) -> None:
    """Three callers wait on one refresh that fails: each is told the failure (the delay used
    as its Retry-After) with an error object of its own; the one upstream raised is unchanged."""
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    entry._closed = True  # no timer: only callers drive it here
    upstream.gate = asyncio.Event()
    upstream.fail_with = UpstreamFailing("busy", endpoint="aad", retry_after=100)
    callers = [asyncio.ensure_future(entry.get()) for _ in range(3)]
    await upstream.started.wait()
    upstream.gate.set()
    told = await asyncio.gather(*callers, return_exceptions=True)
    assert upstream.calls == 1
    assert all(type(e) is UpstreamFailing and e.retry_after == 100 for e in told)
    assert len({id(e) for e in told}) == 3 and upstream.fail_with not in told


async def test_a_remembered_failure_is_answered_until_retry_at_with_the_time_left(
    clock: FakeClock,
) -> None:
    """After a failure with Retry-After, callers get the same error at once, told the time
    left of the delay in use, with no upstream call; at retry_at exactly, upstream is asked
    again."""
    upstream = Upstream(clock)
    _, entry = entry_with(clock, upstream)
    entry._closed = True  # no timer: only callers drive it here
    upstream.fail_with = UpstreamFailing("busy", endpoint="aad", retry_after=100)
    with pytest.raises(UpstreamFailing):
        await entry.get()
    assert entry.retry_at == clock.monotonic() + 100  # the delay used is Retry-After's
    clock.advance(60)
    with pytest.raises(UpstreamFailing) as remembered:
        await entry.get()
    told, original = remembered.value, upstream.fail_with
    assert (type(told), told.message, told.endpoint, told.code) == (
        type(original),
        original.message,
        original.endpoint,
        original.code,
    )
    assert told.retry_after == pytest.approx(40)  # what is left of it, on a copy:
    assert original.retry_after == 100  # the error upstream raised is never changed
    assert upstream.calls == 1
    clock.advance(40)  # exactly retry_at: asked again
    upstream.fail_with = None
    token, hit = await entry.get()
    assert (token.value, hit, upstream.calls) == ("token-2", False, 2)


async def test_a_forced_refresh_that_succeeds_before_retry_at_leaves_nothing_remembered(
    clock: FakeClock,
) -> None:
    """A failure parks callers until retry_at; a forced refresh succeeding before then clears
    the failure, so a later caller who needs a fresher token fetches one (no stale error)."""
    upstream = Upstream(clock, lifetime=40)  # servable (30 s left) for 10 s only
    _, entry = entry_with(clock, upstream)
    entry._closed = True
    upstream.fail_with = UpstreamFailing("busy", endpoint="aad", retry_after=100)
    with pytest.raises(UpstreamFailing):
        await entry.get()
    upstream.fail_with = None
    clock.advance(1)
    await entry.refresh()
    clock.advance(12)  # before the old retry_at, after the token stopped being servable
    token, hit = await entry.get()
    assert (token.value, hit, upstream.calls) == ("token-3", False, 3)


async def test_a_fresh_token_too_short_for_the_callers_need_is_refused_in_words(
    clock: FakeClock,
) -> None:
    """A caller that needs 35 s (an MSI caller's longer margin) gets a fresh token with 34 s:
    upstream_failing naming the requirement and the endpoint, not the token."""
    upstream = Upstream(clock, lifetime=34)  # servable under the entry's own 30 s
    _, entry = entry_with(clock, upstream)
    entry._closed = True
    with pytest.raises(UpstreamFailing) as refused:
        await entry.get(min_remaining=35)
    assert refused.value.message == "upstream token has less than the 35 s required left"
    assert str(refused.value) == refused.value.message
    assert refused.value.endpoint == "aad"
    token, hit = await entry.get()  # the entry's own callers are served from it
    assert (token.value, hit, upstream.calls) == ("token-1", True, 1)


async def test_a_failed_flight_nobody_awaits_leaves_no_unretrieved_exception(
    clock: FakeClock,
) -> None:
    """A background refresh that fails with no caller waiting: the loop's exception handler
    never hears of it (no 'Task exception was never retrieved', no failing callback)."""
    loop = asyncio.get_running_loop()
    heard: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: heard.append(context))
    try:
        upstream = Upstream(clock)
        upstream.fail_with = UpstreamFailing("busy", endpoint="aad")
        _, entry = entry_with(clock, upstream)
        entry._closed = True
        flight = entry._launch()  # as the timer starts it: nobody awaits it
        while not flight.done():
            await asyncio.sleep(0)
        del flight
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        error = entry.last_error  # a copy, dated (since), of what upstream raised
        assert upstream.calls == 1 and isinstance(error, UpstreamFailing)
        assert error.message == "busy" and error.since == clock.time()
        assert heard == []
    finally:
        loop.set_exception_handler(previous)
