"""The broker end to end: HTTP app → cache → upstream client → the sandbox on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET

import aiohttp
import jwt
import pytest

from tests.conftest import HEADERS, FakeClock, make_settings


async def test_concurrent_cold_callers_cause_one_call_per_endpoint(sandbox, secret, start_broker):
    """200 concurrent callers on a cold profile: one Azure AD and one /generatetoken call."""
    settings = make_settings(sandbox, secret, profiles="[profiles.default]\nwarm = false\n")
    b = await start_broker(settings)
    sandbox.state.latency["partner"] = 0.2  # keep the flight open while the crowd arrives
    responses = await asyncio.gather(*(b.get("/v1/token/default") for _ in range(200)))
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 200
    assert len({body["access_token"] for body in bodies}) == 1
    assert sandbox.state.counts == {"aad": 1, "partner": 1}


async def test_cache_hits_make_no_upstream_calls(sandbox, secret, start_broker):
    """After the first token, 100 requests cause no upstream call at all."""
    b = await start_broker(make_settings(sandbox, secret))
    first = await b.get("/v1/token")
    assert first.status == 200
    calls = dict(sandbox.state.counts)
    for _ in range(100):
        assert (await b.get("/v1/token/default")).status == 200
    assert dict(sandbox.state.counts) == calls == {"aad": 1, "partner": 1}


async def test_token_response_shapes(sandbox, secret, start_broker):
    """JSON (default), XML and text/plain carry the same token, with Cache-Control: no-store."""
    b = await start_broker(make_settings(sandbox, secret))
    r = await b.get("/v1/token/default")
    body = await r.json()
    assert r.headers["Cache-Control"] == "no-store"
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_on",
        "expires_in",
        "profile",
        "kind",
    }
    assert body["token_type"] == "Bearer" and body["profile"] == "default"
    assert body["kind"] == "partner" and 3500 < body["expires_in"] <= 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://api.partnercenter.microsoft.com"
    assert abs(body["expires_on"] - claims["exp"]) <= 1

    r = await b.get("/v1/token/default", headers={"Accept": "application/xml"})
    assert r.content_type == "application/xml"
    root = ET.fromstring(await r.read())
    assert root.findtext("access_token") == body["access_token"]
    assert root.findtext("expires_on") == str(body["expires_on"])

    r = await b.get("/v1/token/default", headers={"Accept": "text/xml;q=0.9, text/plain"})
    assert r.content_type == "text/plain"
    assert await r.text() == body["access_token"]
    assert r.headers["Cache-Control"] == "no-store"


async def test_aad_kind_serves_the_azure_ad_token(sandbox, secret, start_broker):
    """kind=aad returns the Azure AD token (audience Partner Center), not the exchanged one."""
    b = await start_broker(make_settings(sandbox, secret))
    aad = await (await b.get("/v1/token/default?kind=aad")).json()
    partner = await (await b.get("/v1/token/default")).json()
    assert aad["kind"] == "aad" and aad["access_token"] != partner["access_token"]
    claims = jwt.decode(aad["access_token"], options={"verify_signature": False})
    assert claims["appid"] and claims["iss"].startswith("https://sts.windows.net/")


async def test_partner_center_call_carries_the_contract_headers(sandbox, secret, start_broker):
    """generatetoken gets Bearer, Accept JSON, grant_type=jwt_token, and fresh correlation ids."""
    settings = make_settings(sandbox, secret, profiles="[profiles.a]\n[profiles.b]\n")
    b = await start_broker(settings)
    assert (await b.get("/v1/token/a")).status == 200
    assert (await b.get("/v1/token/b")).status == 200
    calls = [c for c in sandbox.state.calls if c.endpoint == "partner"]
    assert len(calls) == 2
    for call in calls:
        assert call.headers["Authorization"].startswith("Bearer ey")
        assert call.headers["Accept"] == "application/json"
        assert call.path == "/v3/generatetoken" and call.status == 200
    assert calls[0].headers["ms-correlationid"] != calls[1].headers["ms-correlationid"]
    assert calls[0].headers["ms-requestid"] != calls[1].headers["ms-requestid"]


async def test_unknown_profile_is_a_404_json_error(sandbox, secret, start_broker):
    """An unknown profile gets the JSON error shape and no upstream call."""
    b = await start_broker(make_settings(sandbox, secret))
    r = await b.get("/v1/token/nope")
    assert r.status == 404
    assert (await r.json())["error"]["code"] == "unknown_profile"


async def test_bad_local_input_gets_clear_4xx_json(sandbox, secret, start_broker):
    """Bad kind, unacceptable Accept, wrong method, unknown path: 4xx JSON, never a 500."""
    b = await start_broker(make_settings(sandbox, secret))
    cases = [
        (b.get("/v1/token/default?kind=other"), 400, "bad_kind"),
        (b.get("/v1/token/default", headers={"Accept": "image/png"}), 406, "not_acceptable"),
        (b.client.post("/v1/token/default", headers=HEADERS), 405, "method_not_allowed"),
        (b.get("/v2/whatever"), 404, "not_found"),
        (b.client.get("/v1/token/default"), 400, "required_header_missing"),
        (b.get("/v1/token/default", headers={"Host": "evil.example"}), 403, "host_not_allowed"),
        (
            b.get("/v1/token/default", headers={"X-Forwarded-For": "10.0.0.1"}),
            403,
            "proxied_request",
        ),
        (b.get("/v1/token/default", headers={"Forwarded": "for=1.2.3.4"}), 403, "proxied_request"),
    ]
    for request, status, code in cases:
        r = await request
        assert r.status == status, code
        assert r.content_type == "application/json"
        assert (await r.json())["error"]["code"] == code


async def test_profiles_shows_state_without_tokens(sandbox, secret, start_broker):
    """/v1/profiles shows each entry's state and calls, and no token or secret."""
    b = await start_broker(make_settings(sandbox, secret))
    token = (await (await b.get("/v1/token")).json())["access_token"]
    r = await b.get("/v1/profiles")
    text = await r.text()
    profiles = json.loads(text)["profiles"]
    assert profiles["default"]["partner"]["state"] == "fresh"
    assert profiles["default"]["aad"]["upstream_calls"] == {"ok": 1}
    assert token not in text and secret not in text and "eyJ" not in text


async def test_readyz_waits_for_warm_profiles(sandbox, secret, start_broker):
    """/readyz is 503 until every warm profile holds tokens, then 200; /healthz is 200 always."""
    sandbox.state.latency["aad"] = 0.3
    b = await start_broker(make_settings(sandbox, secret))
    assert (await b.client.get("/healthz")).status == 200
    early = await b.client.get("/readyz")
    assert early.status == 503
    await sandbox.state.wait_calls("partner", 1)
    await b.broker.entry("default", "partner").get()
    assert (await b.client.get("/readyz")).status == 200


async def test_refresh_ahead_through_the_whole_stack(
    fake_sandbox, secret, start_broker, clock: FakeClock
):
    """With the clock moved to the refresh point, the broker refreshes on its own while callers
    keep getting the cached token from a slow upstream without waiting."""
    b = await start_broker(make_settings(fake_sandbox, secret), clock=clock)
    first = await (await b.get("/v1/token")).json()
    fake_sandbox.state.latency["partner"] = 0.5
    clock.advance(3600 - 900)  # partner refresh point: 25 % of 3600 s before expiry
    partner = b.broker.entry("default", "partner")
    assert partner.flight is not None  # the refresh started with no caller
    for _ in range(20):
        r = await b.get("/v1/token")
        assert (await r.json())["access_token"] == first["access_token"]
    assert partner.flight is not None  # ...and every caller above was served meanwhile
    await partner.flight
    fresh = await (await b.get("/v1/token")).json()
    assert fresh["access_token"] != first["access_token"]
    assert fresh["expires_in"] >= 3599


async def test_forced_refresh_is_deduplicated_and_rate_limited(sandbox, secret, start_broker):
    """POST /refresh makes a new token; a second one at once is refused with 429."""
    b = await start_broker(make_settings(sandbox, secret))
    before = (await (await b.get("/v1/token")).json())["access_token"]
    r = await b.client.post("/v1/token/default/refresh", headers=HEADERS)
    assert r.status == 200 and (await r.json())["refreshed"] is True
    after = (await (await b.get("/v1/token")).json())["access_token"]
    assert after != before
    again = await b.client.post("/v1/token/default/refresh", headers=HEADERS)
    assert again.status == 429 and "Retry-After" in again.headers
    assert sandbox.state.counts == {"aad": 2, "partner": 2}


async def test_metrics_count_requests_and_hits(sandbox, secret, start_broker):
    """/metrics exposes request, cache and upstream counters, and no token."""
    b = await start_broker(make_settings(sandbox, secret))
    token = (await (await b.get("/v1/token")).json())["access_token"]
    await b.get("/v1/token")
    text = await (await b.client.get("/metrics")).text()
    assert 'broker_http_requests_total{route="token",status="200"} 2.0' in text
    assert 'broker_cache_requests_total{kind="partner",profile="default",result="hit"}' in text
    assert 'broker_upstream_requests_total{endpoint="aad",outcome="ok"} 1.0' in text
    assert 'broker_token_expires_in_seconds{kind="partner",profile="default"}' in text
    assert token not in text and secret not in text


async def test_reload_adds_removes_and_refreshes_changed_profiles(sandbox, secret, start_broker):
    """apply(): a new profile is served, a removed one is 404, a changed one fetches anew."""
    b = await start_broker(make_settings(sandbox, secret, profiles="[profiles.a]\n[profiles.b]\n"))
    first_a = (await (await b.get("/v1/token/a")).json())["access_token"]
    assert (await b.get("/v1/token/b")).status == 200
    new = make_settings(
        sandbox, secret, profiles="[profiles.a]\nmin_remaining = 45\n[profiles.c]\n"
    )
    changes = b.broker.apply(new)
    assert changes["added"] == ["c"] and changes["removed"] == ["b"]
    assert changes["changed"] == ["a"] and changes["needs_restart"] == []
    assert (await b.get("/v1/token/b")).status == 404
    assert (await b.get("/v1/token/c")).status == 200
    second_a = (await (await b.get("/v1/token/a")).json())["access_token"]
    assert second_a != first_a  # the changed profile started over


async def test_a_reload_that_fails_changes_nothing(sandbox, secret, start_broker, monkeypatch):
    """If building the new profiles fails, settings and entries stay exactly as they were."""
    from broker.core import runtime

    b = await start_broker(make_settings(sandbox, secret, profiles="[profiles.a]\n"))
    assert (await b.get("/v1/token/a")).status == 200
    before = (b.broker.settings, list(b.broker.runtime.entries()), b.broker.runtime)

    def broken(*args, **kwargs):
        raise ValueError("credential cannot be built")

    monkeypatch.setattr(runtime, "profile_entries", broken)
    with pytest.raises(ValueError):
        b.broker.apply(make_settings(sandbox, secret, profiles="[profiles.z]\n"))
    assert (b.broker.settings, list(b.broker.runtime.entries()), b.broker.runtime) == before
    assert (await b.get("/v1/token/a")).status == 200


async def test_every_operator_metric_is_exposed(sandbox, secret, start_broker):
    """The families operators chart and alert on are all on /metrics, labelled without tokens."""
    b = await start_broker(make_settings(sandbox, secret))
    await b.get("/v1/token")
    text = await (await b.client.get("/metrics")).text()
    for family in (
        "broker_http_requests_total",
        "broker_cache_requests_total",
        "broker_upstream_requests_total",
        "broker_upstream_latency_seconds_bucket",
        "broker_token_expires_in_seconds",
        "broker_refresh_failures_in_row",
        "broker_singleflight_waiters",
        "broker_entry_state",
        "broker_refreshes_total",
    ):
        assert f"\n{family}{{" in text, family
    labels = re.findall(r'="([^"]*)"', text)
    assert all(len(value) < 64 and not value.startswith("ey") for value in labels)


async def test_reloaded_guards_apply_to_every_endpoint(sandbox, secret, start_broker):
    """After a reload that changes the required header and the allowed hosts, every endpoint
    family enforces the new ones (none keeps a stale copy)."""
    b = await start_broker(make_settings(sandbox, secret))
    new = make_settings(
        sandbox,
        secret,
        server='required_header = "X-Broker-Ask: yes"\nallowed_hosts = ["localhost"]',
    )
    b.broker.apply(new)
    old_header = {"Metadata": "true"}
    new_header = {"X-Broker-Ask": "yes", "Host": "localhost"}
    for method, path in (
        ("GET", "/v1/token"),
        ("GET", "/v1/profiles"),
        ("POST", "/v1/token/default/refresh"),
    ):
        r = await b.client.request(method, path, headers=old_header)
        assert r.status in (400, 403), path
        r = await b.client.request(method, path, headers={**new_header, "Host": "127.0.0.1"})
        assert r.status == 403, path
        r = await b.client.request(method, path, headers=new_header)
        assert r.status == 200, path
    mirror = await b.client.post("/v3/generatetoken", headers={"Authorization": "Bearer x"})
    assert mirror.status == 403  # the Host 127.0.0.1 is no longer allowed there either


async def test_accept_q_nan_does_not_outrank_q_1(sandbox, secret, run_server):
    """`*/*;q=nan, text/plain;q=1` asks for text/plain."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    async with aiohttp.ClientSession() as s:
        headers = {**HEADERS, "Accept": "*/*;q=nan, text/plain;q=1"}
        async with s.get(f"http://{address}/v1/token", headers=headers) as r:
            assert r.status == 200 and r.content_type == "text/plain"
