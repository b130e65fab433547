"""Upstream faults: the broker keeps serving while it can, never serves an expired token (nor
one whose expiry cannot be read), and cannot be turned into a flood against upstream, whatever
Retry-After it is told. Sandbox fault knobs, or the hostile fake for answers the sandbox never
gives, plus an injected clock."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt
import pytest
from aiohttp import web

from broker.config.load import parse_settings
from broker.core.tokens import schedule
from tests.conftest import HEADERS, config_text, make_settings
from tests.hostile import raw_json
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


async def test_nan_expiries_are_bad_tokens(hostile, secret, run_server):
    """Azure AD says `expires_in: "NaN"`; Partner Center (through the mirror) sends a JWT whose
    `exp` is NaN, or `expires_in: Infinity`: each is a 502 upstream_bad_token, never cached,
    and /v1/profiles, /readyz and /metrics keep answering."""
    nan_jwt = jwt.encode({"exp": float("nan"), "aud": "x"}, "k" * 32, algorithm="HS256")
    partner_answers = [
        json.dumps({"access_token": nan_jwt, "expires_in": 3600}),
        '{"access_token": "opaque-partner-0001", "expires_in": Infinity}',
    ]

    async def aad(request: web.Request) -> web.Response:
        return raw_json('{"access_token": "opaque-aad-token-0001", "expires_in": "NaN"}')

    async def partner(request: web.Request) -> web.Response:
        return raw_json(partner_answers.pop(0))

    hostile.aad, hostile.partner = aad, partner
    (address,), logs = await run_server(make_settings(hostile, secret))
    base = f"http://{address}"
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"{base}/v1/token?kind=aad", headers=HEADERS) as r:
                assert r.status == 502
                assert (await r.json())["error"]["code"] == "upstream_bad_token"
        for path, status in (("/v1/profiles", 200), ("/readyz", 503), ("/metrics", 200)):
            async with s.get(base + path, headers=HEADERS) as r:
                assert r.status == status, path
        for i in range(2):
            async with s.post(
                f"{base}/generatetoken",
                data="grant_type=jwt_token",
                headers={
                    "Authorization": f"Bearer caller-{i}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            ) as r:
                assert r.status == 502
    assert "Traceback" not in logs.getvalue()


RETRY_AFTERS = {
    "huge": "9" * 400,
    "big": "999999999",
    "date": "Fri, 31 Dec 9999 23:59:59 GMT",
}


async def test_absurd_retry_after_is_clamped(hostile, secret, run_server):
    """Azure AD answers 503 with a 400-digit Retry-After, 999999999, or a date in 9999: /v1 and
    /msi answer 503 (not 500) and tell the caller the delay the broker actually uses (at most
    600 s), which is when its own next attempt is due."""

    async def aad(request: web.Request) -> web.Response:
        form = await request.post()
        return raw_json(
            '{"error": "temporarily_unavailable"}',
            status=503,
            headers={"Retry-After": RETRY_AFTERS[str(form["client_id"])]},
        )

    hostile.aad = aad
    profiles = "".join(
        f'[profiles.{name}]\nclient_id = "{name}"\nwarm = false\n' for name in RETRY_AFTERS
    )
    text = config_text(hostile, profiles=profiles) + (
        '[msi]\nprofile = "huge"\nidentity_header_env = "MSI_HEADER"\n'
    )
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret, "MSI_HEADER": "h" * 32})
    (address,), logs = await run_server(settings)
    async with aiohttp.ClientSession() as s:
        for name in RETRY_AFTERS:
            told = []
            for _ in range(2):  # the failure, then the remembered failure
                url = f"http://{address}/v1/token/{name}?kind=aad"
                async with s.get(url, headers=HEADERS) as r:
                    assert r.status == 503, name
                    told.append(int(r.headers["Retry-After"]))
            assert 0 < told[1] <= told[0] <= 600, (name, told)
        async with s.get(
            f"http://{address}/msi/token",
            params={
                "api-version": "2019-08-01",
                "resource": "https://api.partnercenter.microsoft.com",
            },
            headers={"X-IDENTITY-HEADER": "h" * 32},
        ) as r:
            assert r.status == 503
            assert 0 < int(r.headers["Retry-After"]) <= 600
    assert hostile.calls["aad"] == 3
    assert "Traceback" not in logs.getvalue()


async def test_min_remaining_longer_than_the_token_life_backs_off(
    fake_sandbox, secret, start_broker, clock
):
    """min_remaining = 3600 with 3599 s tokens: each new token can never be served. Callers
    get a clean 503 and Azure AD is called on the backoff schedule, not every second; and
    check-config warns about such a min_remaining."""
    fake_sandbox.state.lifetimes.update(aad=3599, partner=3599)
    settings = make_settings(fake_sandbox, secret, defaults="min_remaining = 3600")
    assert any("defaults.min_remaining: 3600 s" in w for w in settings.warnings)
    b = await start_broker(settings, clock=clock)
    await settle(b)
    response = await b.get("/v1/token")
    assert response.status == 503
    assert "never be served" in (await response.json())["error"]["message"]
    for _ in range(120):  # two minutes, a second at a time
        clock.advance(1)
        await settle(b)
    assert fake_sandbox.state.counts["aad"] <= 12, fake_sandbox.state.counts
