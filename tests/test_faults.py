"""Upstream faults: the broker keeps serving while it can, never serves an expired token, and
cannot be turned into a flood against upstream. Sandbox fault knobs plus an injected clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.core.tokens import schedule
from tests.conftest import make_settings
from tests.support import settle

COLD = "[profiles.default]\nwarm = false\n"


def attempts_within(window: float, first_at: float) -> int:
    """How many attempts the backoff schedule (rand = 0.5) allows in [first_at, window]."""
    t, n = first_at, 0
    while t <= window:
        n += 1
        t += schedule.retry_delay(n, retryable=True, retry_after=None, rand=lambda: 0.5)
    return n


async def test_outage_longer_than_a_token_life(fake_sandbox, secret, start_broker, clock):
    """Partner Center answers 500 for 900 s while its token lives 600 s; 64 callers poll every
    5 s: no error while the cached token was servable, none expired, then clean 503s; upstream
    attempts stay within the backoff schedule; recovery within one backoff step."""
    fake_sandbox.state.lifetimes["partner"] = 600
    b = await start_broker(make_settings(fake_sandbox, secret), clock=clock)
    assert (await b.get("/v1/token")).status == 200
    entry = b.broker.entry("default", "partner")
    expires = entry.token.expires_mono
    fake_sandbox.state.fail("partner", 500, times=None)
    calls_before = fake_sandbox.state.counts["partner"]
    ok = errors_while_servable = expired = clean_503 = servable_polls = 0
    for _ in range(180):  # 900 s in 5 s steps
        clock.advance(5)
        await settle(b)
        responses = await asyncio.gather(*(b.get("/v1/token") for _ in range(64)))
        servable = expires - clock.monotonic() >= 30
        servable_polls += servable
        for r in responses:
            body = await r.json()
            if r.status == 200:
                ok += 1
                expired += body["expires_in"] < 30
            elif servable:
                errors_while_servable += 1
            else:
                assert r.status == 503, body
                assert body["error"]["code"] == "upstream_failing"
                assert body["error"]["upstream_status"] == 500
                clean_503 += 1
    attempts = fake_sandbox.state.counts["partner"] - calls_before
    first = 600 - 150 - 15  # refresh point: 25 % of 600 s before expiry, jitter 0.5 x 30 s
    assert (errors_while_servable, expired) == (0, 0)
    # exp is whole seconds, so the token lives 599.x s: polls at 5..565 s find >= 30 s left.
    assert servable_polls == 113 and ok == 64 * servable_polls
    assert clean_503 == 64 * 180 - ok
    assert 5 <= attempts <= attempts_within(900, first) + 1 <= 25  # not 11,520
    fake_sandbox.state.clear()
    clock.advance(schedule.BACKOFF_CAP / 2)  # one backoff step at rand = 0.5
    await settle(b)
    recovered = await b.get("/v1/token")
    assert recovered.status == 200 and (await recovered.json())["expires_in"] > 500


async def test_retry_after_on_429_is_honoured(fake_sandbox, secret, start_broker, clock):
    """A 429 with Retry-After: 30 → no new attempt for 30 s, callers told when to come back."""
    fake_sandbox.state.fail("partner", 429, retry_after="30")
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=COLD), clock=clock)
    r = await b.get("/v1/token")
    body = await r.json()
    assert r.status == 503 and body["error"]["upstream_status"] == 429
    assert r.headers["Retry-After"] == "30"
    entry = b.broker.entry("default", "partner")
    assert entry.next_at - clock.monotonic() == 30
    clock.advance(29.9)
    for _ in range(100):
        assert (await b.get("/v1/token")).status == 503
    assert fake_sandbox.state.counts["partner"] == 1
    clock.advance(0.1)
    await settle(b)
    assert fake_sandbox.state.counts["partner"] == 2
    assert (await b.get("/v1/token")).status == 200


async def test_wrong_secret_under_a_crowd(sandbox, start_broker):
    """50 concurrent callers with a wrong secret: all 502 with upstream_status 401, one call to
    Azure AD; 200 more callers during the cool-down add none."""
    b = await start_broker(make_settings(sandbox, "not-the-right-secret-value", profiles=COLD))
    sandbox.state.latency["aad"] = 0.1
    responses = await asyncio.gather(*(b.get("/v1/token") for _ in range(50)))
    bodies = [await r.json() for r in responses]
    assert {r.status for r in responses} == {502}
    assert {body["error"]["upstream_status"] for body in bodies} == {401}
    assert all(body["error"]["code"] == "upstream_refused" for body in bodies)
    for _ in range(200):
        assert (await b.get("/v1/token")).status == 502
    assert sandbox.state.counts["aad"] == 1 and sandbox.state.counts["partner"] == 0


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("expired", "already expired"),
        ("no_expiry", "no usable expiry"),
        ("html", "not a JSON token (text/html)"),
        ("garbage", "not a JSON token"),
        ("too_long", "absurd lifetime"),
    ],
)
async def test_answers_that_are_not_tokens_are_errors(
    fake_sandbox, secret, start_broker, clock, mode, reason
):
    """An expired token, no expiry, an HTML page, garbage, a 48 h token: 502, nothing cached;
    the next attempt after the backoff succeeds."""
    fake_sandbox.state.fail("partner", mode=mode)
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=COLD), clock=clock)
    r = await b.get("/v1/token")
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "upstream_bad_token"
    assert reason in error["message"]
    entry = b.broker.entry("default", "partner")
    assert entry.token is None and entry.status().state == "failing"
    clock.advance(schedule.FAILURE_MEMORY)
    assert (await b.get("/v1/token")).status == 200


async def test_upstream_timeout_is_a_504_within_the_bound(sandbox, secret, start_broker):
    """A hanging Partner Center: the caller gets 504 after upstream_timeout, not a hang."""
    sandbox.state.fail("partner", mode="hang", delay=30)
    b = await start_broker(
        make_settings(sandbox, secret, profiles=COLD, defaults="upstream_timeout = 0.3")
    )
    started = time.monotonic()
    r = await b.get("/v1/token")
    elapsed = time.monotonic() - started
    assert r.status == 504 and (await r.json())["error"]["code"] == "upstream_timeout"
    assert elapsed < 1.0


async def test_connection_reset_is_a_503(sandbox, secret, start_broker):
    """A dropped connection: 503 upstream_unreachable, retried later."""
    sandbox.state.fail("aad", mode="reset")
    b = await start_broker(make_settings(sandbox, secret, profiles=COLD))
    r = await b.get("/v1/token")
    body = await r.json()
    assert r.status == 503 and body["error"]["code"] == "upstream_unreachable"
    assert "correlation_id" in body["error"]


async def test_refusal_cools_down_then_retries(fake_sandbox, secret, start_broker, clock):
    """After a 403 the broker waits REFUSAL_COOLDOWN before asking again, then recovers."""
    fake_sandbox.state.fail("partner", 403)
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=COLD), clock=clock)
    assert (await b.get("/v1/token")).status == 502
    clock.advance(schedule.REFUSAL_COOLDOWN - 0.1)
    assert (await b.get("/v1/token")).status == 502
    assert fake_sandbox.state.counts["partner"] == 1
    clock.advance(0.1)
    await settle(b)
    assert (await b.get("/v1/token")).status == 200
    assert fake_sandbox.state.counts["partner"] == 2


@pytest.mark.parametrize(("skew", "expected"), [(600, 3599), (-600, 2999)])
async def test_skewed_upstream_clock(fake_sandbox, secret, start_broker, clock, skew, expected):
    """Upstream's clock 10 min ahead: the token still lives its honest 3599 s (not 4199);
    10 min behind: the earlier `exp` wins (2999 s), never more than upstream granted."""
    fake_sandbox.state.clock_skew = skew
    fake_sandbox.state.lifetimes["partner"] = 3599
    b = await start_broker(make_settings(fake_sandbox, secret), clock=clock)
    body = await (await b.get("/v1/token")).json()
    assert expected - 1 <= body["expires_in"] <= expected


async def test_profiles_show_failure_detail(fake_sandbox, secret, start_broker, clock):
    """/v1/profiles shows the failing state, the upstream status, failures in a row, the next
    attempt and the call counts by outcome."""
    fake_sandbox.state.fail("partner", 503, times=2)
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=COLD), clock=clock)
    await b.get("/v1/token")
    clock.advance(schedule.FAILURE_MEMORY)
    await b.get("/v1/token")
    partner = (await (await b.get("/v1/profiles")).json())["profiles"]["default"]["partner"]
    assert partner["state"] == "failing" and partner["failures_in_row"] == 2
    assert partner["last_error"]["upstream_status"] == 503
    assert partner["next_attempt_in"] == schedule.FAILURE_MEMORY
    assert partner["upstream_calls"] == {"upstream_failing": 2}
