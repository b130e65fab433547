"""Customer tenants (GDAP, Secure Application Model): tokens per (tenant, scope) from one
refresh token, against the sandbox's customer tenants.

The customer-tenant cache (broker/core/tenants/), one behaviour at a time, each pinned by what
a caller, an operator reading the tenant listing, the logs or /metrics sees: which refusals are
remembered how long and how far, what the listing says about a tenant, what is logged, what is
evicted. There, time is a fake clock with a fixed wall-clock fraction (so cool-downs from an
HTTP-date Retry-After come out as 119.75 s and their rounding shows); upstreams are the
sandbox, or the hostile fake for answers the sandbox never gives.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import os
import re
import time
import uuid
from pathlib import Path

import jwt
import pytest
from aiohttp import web

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from broker.core.cache.shared import shared_key
from broker.core.tenants import (
    THROTTLED,
    FifoLimiter,
    TenantCache,
    aadsts_codes,
    classify,
    views,
)
from tests.conftest import CLIENT_ID, HEADERS, FakeClock, config_text, make_settings
from tests.hostile import Hostile

GRAPH = "https://graph.microsoft.com/.default"
EXCHANGE = "https://outlook.office365.com/.default"
ARM = "https://management.azure.com/.default"
SCOPES = (GRAPH, EXCHANGE, ARM)


def tenant_id(i: int) -> str:
    return str(uuid.UUID(int=0x1000 + i))


def gdap_profile(rt_file: Path, *, tenants: str = '["*"]', extra: str = "") -> str:
    scopes = ", ".join(f'"{s}"' for s in SCOPES)
    return f"""[profiles.gdap]
credential = "refresh_token"
refresh_token_file = "{rt_file}"
warm = false
customer_tenants = {tenants}
customer_scopes = [{scopes}]
{extra}
"""


def gdap_settings(sandbox, secret: str, tmp_path: Path):
    """A refresh token for the sandbox app, in a file; returns a settings maker: the gdap
    profile (gdap_profile's keyword arguments), then `profile_extra`. It knows the file
    (`rt_file`) and the app (`app`)."""
    app = sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    rt_file.chmod(0o600)
    placed = sandbox.state.now()  # placed now by the sandbox's clock (the keep-alive reads it)
    os.utime(rt_file, (placed, placed))

    def settings(profile_extra: str = "", **kwargs):
        return make_settings(
            sandbox,
            secret,
            profiles="[profiles.default]\nwarm = false\n"
            + gdap_profile(rt_file, **kwargs)
            + profile_extra,
        )

    settings.rt_file = rt_file  # type: ignore[attr-defined]
    settings.app = app  # type: ignore[attr-defined]
    return settings


@pytest.fixture
def gdap(sandbox, secret, tmp_path):
    """gdap_settings against the sandbox on the real clock."""
    return gdap_settings(sandbox, secret, tmp_path)


async def token(b, tenant: str, scope: str | None = None, **params):
    query = {"tenant": tenant, **({"scope": scope} if scope else {}), **params}
    return await b.get("/v1/token/gdap", params=query)


# -- a crowd over many tenants; consent refusals remembered ------------------------------------


async def test_thousand_callers_hundred_tenants_three_scopes(sandbox, gdap, start_broker):
    """1,000 concurrent callers over 100 tenants x 3 scopes: exactly 300 Azure AD calls, never
    more than upstream_concurrency (4 here) in flight at once, measured by the sandbox."""
    for i in range(100):
        sandbox.state.register_customer(tenant_id(i))
    sandbox.state.latency["aad"] = 0.01  # calls overlap, so the limit is what holds them back
    b = await start_broker(gdap(extra="upstream_concurrency = 4"))
    keys = [(tenant_id(i % 100), SCOPES[(i // 100) % 3]) for i in range(1000)]
    answers = await asyncio.gather(*(token(b, t, s) for t, s in keys))
    assert [r.status for r in answers] == [200] * 1000
    bodies = [await r.json() for r in answers]
    assert sandbox.state.counts["aad"] == 300
    assert sandbox.state.aad_max_in_flight == 4
    assert len(sandbox.state.customer_calls) == 300
    for (tenant, scope), body in zip(keys, bodies, strict=True):
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["tid"] == tenant and claims["aud"] == scope.removesuffix("/.default")
        assert body["tenant"] == tenant and body["scope"] == scope and body["kind"] == "aad"
    # Every later caller is a cache hit.
    again = await asyncio.gather(*(token(b, t, s) for t, s in keys[:300]))
    assert {r.status for r in again} == {200} and sandbox.state.counts["aad"] == 300


async def test_consent_required_is_remembered_per_entry(sandbox, gdap, start_broker):
    """50 callers on a consent-missing (tenant, scope): one upstream call, every caller gets
    consent_required with the AADSTS code; the next 50 get it from memory; other tenants and
    other scopes of the same tenant are unaffected; invalidate clears it at once."""
    broken = sandbox.state.register_customer(
        tenant_id(1), consents={"https://outlook.office365.com"}
    )
    sandbox.state.register_customer(tenant_id(2))
    b = await start_broker(gdap())
    answers = await asyncio.gather(*(token(b, tenant_id(1), GRAPH) for _ in range(50)))
    bodies = [await r.json() for r in answers]
    assert {r.status for r in answers} == {502}
    assert {x["error"]["code"] for x in bodies} == {"consent_required"}
    assert {x["error"]["aadsts"] for x in bodies} == {65001}
    assert "AADSTS65001" in bodies[0]["error"]["message"]
    assert int(answers[0].headers["Retry-After"]) >= 250  # minutes, not seconds
    assert sandbox.state.counts["aad"] == 1
    later = await asyncio.gather(*(token(b, tenant_id(1), GRAPH) for _ in range(50)))
    assert {r.status for r in later} == {502} and sandbox.state.counts["aad"] == 1
    # Other tenants, and the same tenant's consented scope, are unaffected.
    assert (await token(b, tenant_id(2), GRAPH)).status == 200
    assert (await token(b, tenant_id(1), EXCHANGE)).status == 200
    listing = await (await b.get("/v1/tenants/gdap")).json()
    rows = {row["tenant"]: row for row in listing["tenants"]}
    assert rows[tenant_id(1)]["state"] == "consent_required"
    assert rows[tenant_id(1)]["last_error"]["aadsts"] == 65001
    assert rows[tenant_id(2)]["state"] == "ok"
    # Consent granted; the operator says so; the next caller goes upstream at once.
    broken.consents = {"*"}
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(1)}/invalidate", headers=HEADERS)
    assert r.status == 200 and (await r.json())["tokens_dropped"] == 2
    assert (await token(b, tenant_id(1), GRAPH)).status == 200
    assert sandbox.state.counts["aad"] == 4
    # Rate-limited like a forced refresh.
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(1)}/invalidate", headers=HEADERS)
    assert r.status == 429 and "Retry-After" in r.headers


async def test_consent_cooldown_allows_one_call_per_cooldown(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """Under a fake clock: 50 callers per round, one upstream call per cool-down (300 s)."""
    fake_sandbox.state.register_customer(tenant_id(1), consents=set())
    b = await start_broker(gdap_fake(), clock=clock)
    for round_ in range(1, 4):
        answers = await asyncio.gather(*(token(b, tenant_id(1), GRAPH) for _ in range(50)))
        assert {r.status for r in answers} == {502}
        assert fake_sandbox.state.counts["aad"] == round_
        clock.advance(299)
        answers = await asyncio.gather(*(token(b, tenant_id(1), GRAPH) for _ in range(50)))
        assert {(await r.json())["error"]["code"] for r in answers} == {"consent_required"}
        assert fake_sandbox.state.counts["aad"] == round_  # still cooling down
        clock.advance(2)  # the entry's retry timer fires: one background attempt
        await fake_sandbox.state.wait_calls("aad", round_ + 1)
    assert fake_sandbox.state.counts["aad"] == 4


# -- pieces, alone ---------------------------------------------------------------------------


async def test_fifo_limiter_admits_in_order_and_survives_cancellation():
    """At most `limit` holders; waiters admitted in arrival order; a cancelled waiter neither
    keeps its place nor loses a slot."""
    limiter = FifoLimiter(2)
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(6)]

    async def hold(i: int) -> None:
        async with limiter:
            order.append(i)
            assert limiter.active <= 2
            await gates[i].wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(6)]
    await asyncio.sleep(0)
    assert order == [0, 1] and limiter.queued == 4
    tasks[2].cancel()  # a waiter gives up
    gates[0].set()
    gates[1].set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == [0, 1, 3, 4]
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4, 5] and limiter.active == 0 and limiter.peak == 2


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (b'{"error_codes": [65001], "error_description": "AADSTS65001: x"}', [65001]),
        (b'{"error_description": "AADSTS50076: MFA\\r\\nTrace ID: 1"}', [50076]),
        (b'{"error_codes": ["65001", true, null]}', []),
        (b'{"error_codes": "65001"}', []),
        (b"[1, 2]", []),
        (b"not json \xff\xfe", []),
        (b"[" * 100_000 + b"]" * 100_000, []),  # nested too deep for the parser
        (b'{"error_codes": [NaN]}', []),
    ],
)
def test_aadsts_codes_from_hostile_bodies(body: bytes, codes: list[int]):
    assert aadsts_codes(body) == codes


@pytest.mark.parametrize(
    ("profile", "problem"),
    [
        ('customer_tenants = ["*"]\n', "profiles.p.customer_scopes: required"),
        ('customer_scopes = ["x/.default"]\n', "needs customer_tenants"),
        ('customer_tenants = ["*", "a.com"]\ncustomer_scopes = ["s"]\n', "stands alone"),
        ('customer_tenants = ["common"]\ncustomer_scopes = ["s"]\n', "not a tenant id"),
        ('customer_tenants = ["a.com/../x"]\ncustomer_scopes = ["s"]\n', "not a tenant id"),
        ('customer_tenants = ["a.com"]\ncustomer_scopes = ["a b"]\n', "is not a scope"),
        ('customer_tenants = []\ncustomer_scopes = ["s"]\n', "non-empty list"),
        ("max_customer_tokens = 0\n", "between 1"),
        ("upstream_concurrency = 1.5\n", "whole number"),
    ],
)
def test_customer_config_problems(sandbox, secret, profile, problem):
    with pytest.raises(ConfigError) as info:
        make_settings(sandbox, secret, profiles=f"[profiles.p]\n{profile}")
    assert problem in str(info.value)


def test_customer_config_defaults_and_case(sandbox, secret):
    s = make_settings(
        sandbox,
        secret,
        profiles='[profiles.p]\ncustomer_tenants = ["Fabrikam.COM"]\ncustomer_scopes = ["s"]\n',
    )
    p = s.profiles["p"]
    assert p.customer_tenants == ("fabrikam.com",) and p.customer_scopes == ("s",)
    assert p.max_customer_tokens == 50000 and p.upstream_concurrency == 16
    assert not make_settings(sandbox, secret).profiles["default"].serves_customers


async def test_a_tenant_token_is_shared_through_redis(
    sandbox, secret, tmp_path, start_broker, redis_db, shared_key
):
    """[shared]: a tenant token fetched by one broker is served by another from Redis, with
    no Azure AD call of its own."""
    sandbox.state.register_customer(tenant_id(7))
    app = sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    text = config_text(
        sandbox, profiles="[profiles.default]\nwarm = false\n" + gdap_profile(rt_file)
    )
    text += f'\n[shared]\nredis_url = "{redis_db.url}"\nkey_file = "{shared_key}"\n'
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret})
    first, second = [await start_broker(settings) for _ in range(2)]
    a = await (await token(first, tenant_id(7), EXCHANGE)).json()
    assert sandbox.state.counts["aad"] == 1
    b = await (await token(second, tenant_id(7), EXCHANGE)).json()
    assert b["access_token"] == a["access_token"] and b["tenant"] == tenant_id(7)
    assert sandbox.state.counts["aad"] == 1
    # Another scope of the same tenant is its own key.
    assert (await token(second, tenant_id(7), GRAPH)).status == 200
    assert sandbox.state.counts["aad"] == 2


# -- the HTTP contract -----------------------------------------------------------------------


async def test_token_answers_in_json_xml_and_text(sandbox, gdap, start_broker):
    sandbox.state.register_customer(tenant_id(1), domains=("fabrikam.example",))
    b = await start_broker(gdap())
    r = await token(b, "Fabrikam.Example")  # a domain, any case; scope defaults to the first
    body = await r.json()
    assert r.status == 200 and r.headers["Cache-Control"].startswith("no-store")
    assert body["tenant"] == "fabrikam.example" and body["scope"] == GRAPH
    assert body["kind"] == "aad" and body["profile"] == "gdap" and body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 3599 and body["expires_on"] > 1_700_000_000
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["tid"] == tenant_id(1) and claims["aud"] == "https://graph.microsoft.com"
    xml = await token(b, tenant_id(1), GRAPH, kind="aad")
    xml = await b.get(
        "/v1/token/gdap", params={"tenant": "fabrikam.example"}, headers={"Accept": "text/xml"}
    )
    text = await xml.text()
    assert xml.status == 200 and "<tenant>fabrikam.example</tenant>" in text
    assert f"<scope>{GRAPH}</scope>" in text and "<kind>aad</kind>" in text
    plain = await b.get(
        "/v1/token/gdap", params={"tenant": "fabrikam.example"}, headers={"Accept": "text/plain"}
    )
    assert await plain.text() == body["access_token"]
    assert sandbox.state.counts["aad"] == 2  # by domain, and by id: two entries


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"tenant": tenant_id(1), "kind": "partner"}, 400, "bad_kind"),
        (
            {"tenant": tenant_id(1), "scope": "https://vault.azure.net/.default"},
            400,
            "scope_not_allowed",
        ),
        ({"tenant": tenant_id(1), "scope": GRAPH + " offline_access"}, 400, "scope_not_allowed"),
        ({"tenant": tenant_id(9)}, 403, "tenant_not_allowed"),
        ({"tenant": "common"}, 400, "bad_tenant"),
        ({"tenant": "../../x"}, 400, "bad_tenant"),
        ({"tenant": "a" * 300 + ".com"}, 400, "bad_tenant"),
        ({"tenant": "\u0430pple.com"}, 400, "bad_tenant"),  # Cyrillic a
        ({"scope": GRAPH}, 400, "scope_not_allowed"),  # not in the profile's own scopes
    ],
)
async def test_bad_requests_are_refused_without_upstream(
    sandbox, gdap, start_broker, params, status, code
):
    sandbox.state.register_customer(tenant_id(1))
    b = await start_broker(gdap(tenants=f'["{tenant_id(1)}"]'))
    r = await b.get("/v1/token/gdap", params=params)
    assert r.status == status and (await r.json())["error"]["code"] == code
    assert sandbox.state.counts["aad"] == 0


async def test_repeated_parameters_and_profiles_without_tenants(sandbox, gdap, start_broker):
    b = await start_broker(gdap())
    r = await b.get(f"/v1/token/gdap?tenant={tenant_id(1)}&tenant={tenant_id(2)}")
    assert r.status == 400 and (await r.json())["error"]["code"] == "bad_tenant"
    r = await b.get(f"/v1/token/gdap?tenant={tenant_id(1)}&scope={GRAPH}&scope={ARM}")
    assert r.status == 400 and (await r.json())["error"]["code"] == "scope_not_allowed"
    r = await b.get(f"/v1/token/default?tenant={tenant_id(1)}")
    assert r.status == 400 and (await r.json())["error"]["code"] == "tenants_not_configured"
    r = await b.get(f"/v1/token/nope?tenant={tenant_id(1)}")
    assert r.status == 404
    for path in ("/v1/tenants/default", "/v1/tenants/nope"):
        assert (await b.get(path)).status in (400, 404)
    r = await b.client.get("/v1/tenants/gdap")  # no Metadata header
    assert r.status == 400
    assert sandbox.state.counts["aad"] == 0


async def test_listing_is_paged_and_never_shows_a_token(sandbox, gdap, start_broker):
    for i in range(5):
        sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap())
    tokens = [await (await token(b, tenant_id(i))).json() for i in range(5)]
    first = await b.get("/v1/tenants/gdap", params={"limit": "2"})
    page = await first.json()
    assert [row["tenant"] for row in page["tenants"]] == [tenant_id(0), tenant_id(1)]
    assert page["next"] == tenant_id(1) and page["tokens"] == 5 and page["tenants_seen"] == 5
    rest = await (await b.get("/v1/tenants/gdap", params={"after": page["next"]})).json()
    assert [row["tenant"] for row in rest["tenants"]] == [tenant_id(i) for i in (2, 3, 4)]
    assert rest["next"] is None and rest["tenants"][0]["scopes"][GRAPH]["state"] == "fresh"
    text = await first.text() + json.dumps(rest)
    assert not any(t["access_token"] in text for t in tokens)
    for bad in (
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"after": "../x"},
        {"limit": "\u00b2"},  # "²": a digit to str.isdigit(), not to int(): a 500 once
        {"limit": "\u0662"},  # an Arabic-Indic two, which int() would take
        {"limit": "0000002"},
    ):
        r = await b.get("/v1/tenants/gdap", params=bad)
        assert r.status == 400, bad
        assert (await r.json())["error"]["code"] in ("bad_limit", "bad_after"), bad


async def test_audit_lines_name_tenant_and_scope_and_metrics_do_not(sandbox, gdap, start_broker):
    sandbox.state.register_customer(tenant_id(3))
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(3), ARM)).status == 200
    assert (await token(b, tenant_id(3), ARM)).status == 200
    b.broker.audit.flush()
    lines = [json.loads(x) for x in b.logs.getvalue().splitlines() if '"token_served"' in x]
    assert [(x["tenant"], x["scope"], x["cache"]) for x in lines] == [
        (tenant_id(3), ARM, "miss"),
        (tenant_id(3), ARM, "hit"),
    ]
    assert (
        lines[0]["kind"] == "aad" and lines[0]["profile"] == "gdap" and lines[0]["correlation_id"]
    )
    metrics = await (await b.client.get("/metrics")).text()
    assert tenant_id(3) not in metrics
    assert 'broker_customer_tokens{profile="gdap"} 1.0' in metrics
    assert 'broker_customer_tenants{profile="gdap",state="ok"} 1.0' in metrics
    assert 'broker_cache_requests_total{kind="tenant",profile="gdap",result="hit"} 1.0' in metrics


# -- Azure AD's refusals, by class -------------------------------------------------------------


async def test_interaction_required_reaches_the_whole_tenant(sandbox, gdap, start_broker):
    """MFA required by the customer's conditional access (AADSTS50076): remembered for the
    tenant, so its other scopes answer without an upstream call; other tenants are served."""
    sandbox.state.register_customer(tenant_id(1), require_mfa=True)
    sandbox.state.register_customer(tenant_id(2))
    sandbox.state.apps[CLIENT_ID].mfa = False
    b = await start_broker(gdap())
    r = await token(b, tenant_id(1), GRAPH)
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "interaction_required" and error["aadsts"] == 50076
    r = await token(b, tenant_id(1), ARM)
    assert (await r.json())["error"]["code"] == "interaction_required"
    assert sandbox.state.counts["aad"] == 1
    assert (await token(b, tenant_id(2), GRAPH)).status == 200
    rows = (await (await b.get("/v1/tenants/gdap")).json())["tenants"]
    assert {r["tenant"]: r["state"] for r in rows} == {
        tenant_id(1): "interaction_required",
        tenant_id(2): "ok",
    }


@pytest.mark.parametrize("code", [50079, 50078, 70043])
async def test_other_interaction_codes(sandbox, gdap, start_broker, code):
    sandbox.state.register_customer(tenant_id(1), refusal=code)
    b = await start_broker(gdap())
    error = (await (await token(b, tenant_id(1))).json())["error"]
    assert (error["code"], error["aadsts"]) == ("interaction_required", code)
    assert f"AADSTS{code}" in error["message"]


async def test_unknown_tenant_and_no_relationship_are_tenant_not_found(sandbox, gdap, start_broker):
    sandbox.state.register_customer(tenant_id(2), relationship=False)
    b = await start_broker(gdap())
    for tenant, code in ((tenant_id(1), 90002), (tenant_id(2), 90072)):
        error = (await (await token(b, tenant)).json())["error"]
        assert (error["code"], error["aadsts"]) == ("tenant_not_found", code)
        error = (await (await token(b, tenant, ARM)).json())["error"]  # the tenant remembers
        assert error["code"] == "tenant_not_found"
    assert sandbox.state.counts["aad"] == 2


@pytest.mark.parametrize("code", [700082, 50173, 70008, 700084])
async def test_invalid_refresh_token_stops_every_tenant_until_a_new_one(
    sandbox, gdap, start_broker, code
):
    """A dead refresh token is the whole profile's problem: after one customer's refusal,
    confirmed by the partner's own tenant (one call), no tenant goes upstream, until a new
    refresh token is placed in the file."""
    for i in range(3):
        sandbox.state.register_customer(tenant_id(i))
    app = sandbox.state.apps[CLIENT_ID]
    app.refresh_token_refusal = code
    settings = gdap()
    b = await start_broker(settings)
    for i in range(3):
        r = await token(b, tenant_id(i))
        error = (await r.json())["error"]
        assert r.status == 502 and error["code"] == "refresh_token_invalid"
        assert error["aadsts"] == code
    assert sandbox.state.counts["aad"] == 2  # tenant 0's, and the partner tenant's
    page = await (await b.get("/v1/tenants/gdap")).json()
    assert page["profile_block"]["state"] == "refresh_token_invalid"
    # The operator signs in again and places a new refresh token.
    app.refresh_token_refusal = None
    gdap.rt_file.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    await b.broker.tenants["gdap"].entry(tenant_id(2), GRAPH).refresh()
    assert (await token(b, tenant_id(2))).status == 200


async def test_throttling_honours_retry_after_for_the_whole_app(sandbox, gdap, start_broker):
    """A 429 with Retry-After (AADSTS50196) from three tenants (THROTTLE_SPREAD) within a
    minute stops every tenant's fetches for that long."""
    for i in range(4):
        sandbox.state.register_customer(tenant_id(i))
    sandbox.state.fail("aad", 429, retry_after="120", times=3)
    b = await start_broker(gdap())
    for i in range(3):
        r = await token(b, tenant_id(i))
        error = (await r.json())["error"]
        assert r.status == 503 and error["code"] == "throttled" and error["aadsts"] == 50196
        assert 115 <= int(r.headers["Retry-After"]) <= 121
    r = await token(b, tenant_id(3), ARM)
    assert r.status == 503 and (await r.json())["error"]["code"] == "throttled"
    assert 110 <= int(r.headers["Retry-After"]) <= 121
    assert sandbox.state.counts["aad"] == 3
    page = await (await b.get("/v1/tenants/gdap")).json()
    assert page["profile_block"]["state"] == "throttled"


async def test_a_hostile_retry_after_is_capped(sandbox, gdap, start_broker):
    sandbox.state.register_customer(tenant_id(0))
    sandbox.state.fail("aad", 429, retry_after="99999999999")
    b = await start_broker(gdap())
    r = await token(b, tenant_id(0))
    assert r.status == 503 and int(r.headers["Retry-After"]) <= 600


async def test_unclassified_refusals_stay_per_entry(sandbox, gdap, start_broker):
    """An AADSTS code the broker does not classify (client secret wrong, 7000215) is the usual
    upstream_refused, remembered by the entry alone."""
    sandbox.state.register_customer(tenant_id(0))
    sandbox.state.fail("aad", 401)
    b = await start_broker(gdap())
    r = await token(b, tenant_id(0))
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "upstream_refused" and error["aadsts"] == 7000215
    assert (await token(b, tenant_id(0), ARM)).status == 200


# -- the refresh token, rotated --------------------------------------------------------------


async def test_a_rotated_refresh_token_is_written_back_and_used_for_every_tenant(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """Strict rotation in the sandbox (a used refresh token stops working): one tenant after
    another succeeds only if each request uses the newest rotated token. A burst writes the
    file at most once a second; the newest is on disk within a second after it."""
    fake_sandbox.state.revoke_rotated = True
    for i in range(4):
        fake_sandbox.state.register_customer(tenant_id(i))
    first = gdap_fake.rt_file.read_text().strip()
    b = await start_broker(gdap_fake(), clock=clock)
    for i in range(4):
        assert (await token(b, tenant_id(i))).status == 200
    written = gdap_fake.rt_file.read_text().strip()
    assert written != first  # the first rotation, at once
    clock.advance(1.0)  # the burst is over: the newest is written back
    await b.broker.credentials["gdap"].settled()
    newest = gdap_fake.rt_file.read_text().strip()
    assert newest != written and newest in gdap_fake.app.refresh_tokens
    assert (gdap_fake.rt_file.stat().st_mode & 0o777) == 0o600
    assert first not in b.logs.getvalue() and newest not in b.logs.getvalue()


async def test_mfa_missing_from_the_profiles_own_token_is_reported(sandbox, gdap, start_broker):
    """Partner Center refuses app+user tokens without MFA: /v1/profiles and /metrics say so."""
    app = sandbox.state.apps[CLIENT_ID]
    app.mfa = False
    b = await start_broker(gdap())
    assert (await b.get("/v1/token/gdap", params={"kind": "aad"})).status == 200
    profiles = (await (await b.get("/v1/profiles")).json())["profiles"]
    assert profiles["gdap"]["mfa"] is False and "mfa" not in profiles["default"]
    metrics = await (await b.client.get("/metrics")).text()
    assert 'broker_aad_token_mfa{profile="gdap"} 0.0' in metrics
    app.mfa = True
    r = await b.client.post("/v1/token/gdap/refresh?kind=aad", headers=HEADERS)
    assert r.status == 200
    profiles = (await (await b.get("/v1/profiles")).json())["profiles"]
    assert profiles["gdap"]["mfa"] is True


# -- bounds and the clock ----------------------------------------------------------------------


async def test_max_customer_tokens_evicts_expired_first_then_lru(
    fake_sandbox, gdap_fake, start_broker, clock
):
    for i in range(8):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 4"), clock=clock)
    cache = b.broker.tenants["gdap"]
    for i in range(4):
        assert (await token(b, tenant_id(i))).status == 200
    assert (await token(b, tenant_id(0))).status == 200  # 0 used again: 1 is now the oldest
    assert (await token(b, tenant_id(4))).status == 200
    assert len(cache) == 4 and cache.lookup(tenant_id(1), GRAPH) is None
    assert cache.lookup(tenant_id(0), GRAPH) is not None and cache.evicted == 1
    # An expired entry goes before a less recently used live one.
    cache.lookup(tenant_id(3), GRAPH).token = None
    assert (await token(b, tenant_id(5))).status == 200
    assert cache.lookup(tenant_id(3), GRAPH) is None and cache.lookup(tenant_id(2), GRAPH)
    # A flood of distinct tenants never grows the cache past the bound.
    for i in range(6, 8):
        assert (await token(b, tenant_id(i))).status == 200
    assert len(cache) == 4 and len(cache.tenants) <= 4 + 4


async def test_refreshed_ahead_while_used_and_lapsing_when_not(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """An entry in use is replaced before it expires, with no caller waiting; one nobody asks
    for lapses: no background refresh, and the next caller fetches it cold."""
    fake_sandbox.state.register_customer(tenant_id(1))
    fake_sandbox.state.register_customer(tenant_id(2))
    fake_sandbox.state.lifetimes["aad"] = 3600
    b = await start_broker(gdap_fake(), clock=clock)
    assert (await token(b, tenant_id(1))).status == 200
    assert (await token(b, tenant_id(2))).status == 200
    assert fake_sandbox.state.counts["aad"] == 2
    for _ in range(5):  # tenant 1 is asked for every ten minutes, tenant 2 never again
        clock.advance(600)
        r = await token(b, tenant_id(1))
        assert r.status == 200 and (await r.json())["expires_in"] >= 599  # never waits
    await fake_sandbox.state.wait_calls("aad", 3)  # the refresh ahead, at about 2,685 s
    entry = b.broker.tenants["gdap"].lookup(tenant_id(1), GRAPH)
    if entry.flight is not None:
        await asyncio.shield(entry.flight)
    assert (await (await token(b, tenant_id(1))).json())["expires_in"] > 3000
    paths = [c.path for c in fake_sandbox.state.calls]
    assert paths.count(f"/{tenant_id(1)}/oauth2/v2.0/token") == 2
    assert paths.count(f"/{tenant_id(2)}/oauth2/v2.0/token") == 1
    clock.advance(1800)  # tenant 2's token has expired; nobody refreshed it
    entry = b.broker.tenants["gdap"].lookup(tenant_id(2), GRAPH)
    assert entry is not None and entry.peek() is None
    assert (await token(b, tenant_id(2))).status == 200
    assert fake_sandbox.state.counts["aad"] >= 4


# -- managed identity per tenant -------------------------------------------------------------


async def test_azure_identity_gets_a_tenants_graph_token(
    sandbox, gdap, secret, start_broker, tmp_path, monkeypatch, witness
):
    """Real azure-identity ManagedIdentityCredential with IDENTITY_ENDPOINT pointing at
    /msi/tenants/<t>/token gets that tenant's Graph token; another tenant's endpoint gets that
    one's; a resource outside customer_scopes is refused."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

    from tests.support import AZURE_ENV

    sandbox.state.register_customer(tenant_id(1))
    sandbox.state.register_customer(tenant_id(2))
    gdap()  # the refresh token file
    text = config_text(
        sandbox,
        profiles="[profiles.default]\nwarm = false\n" + gdap_profile(gdap.rt_file),
    )
    text += f'\n[msi]\nprofile = "gdap"\ngenerated_header_file = "{tmp_path}/identity-header"\n'
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_HEADER", header)

    def fetch(tenant: str, scope: str = GRAPH) -> str:
        monkeypatch.setenv(
            "IDENTITY_ENDPOINT", str(b.client.make_url(f"/msi/tenants/{tenant}/token"))
        )
        return ManagedIdentityCredential().get_token(scope).token

    loop = asyncio.get_running_loop()
    one = await loop.run_in_executor(None, fetch, tenant_id(1))
    two = await loop.run_in_executor(None, fetch, tenant_id(2))
    for value, tenant in ((one, tenant_id(1)), (two, tenant_id(2))):
        claims = jwt.decode(value, options={"verify_signature": False})
        assert claims["tid"] == tenant and claims["aud"] == "https://graph.microsoft.com"
    # The same token /v1 hands out: one cache.
    assert (await (await token(b, tenant_id(1))).json())["access_token"] == one
    assert sandbox.state.counts["aad"] == 2
    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)):
        await loop.run_in_executor(None, fetch, tenant_id(1), "https://vault.azure.net/.default")
    h = {"X-IDENTITY-HEADER": header}
    q = {"api-version": "2019-08-01", "resource": "https://graph.microsoft.com"}
    for path, status in (
        ("/msi/tenants/common/token", 400),
        ("/msi/tenants/a..b/token", 400),
        (f"/msi/tenants/{tenant_id(1)}/token?client_id=nope", 400),
    ):
        r = await b.client.get(path, params=q, headers=h)
        assert r.status == status and "statusCode" in await r.json()
    r = await b.client.get(f"/msi/tenants/{tenant_id(1)}/token", params=q)
    assert r.status == 401


# -- the command line ------------------------------------------------------------------------


async def test_cli_token_tenants_and_msi_env(
    sandbox, gdap, secret, start_broker, capsys, tmp_path, monkeypatch
):
    from broker.cli.main import main

    monkeypatch.delenv("PC_TOKEN_BROKER_CONFIG", raising=False)
    monkeypatch.delenv("PC_TOKEN_BROKER_URL", raising=False)
    sandbox.state.register_customer(tenant_id(1))
    sandbox.state.register_customer(tenant_id(2), consents=set())
    sandbox.state.apps[CLIENT_ID].mfa = False
    b = await start_broker(gdap())
    url = str(b.client.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()

    async def cli(*argv: str) -> int:
        return await loop.run_in_executor(None, main, list(argv))

    assert await cli("token", "gdap", "--tenant", tenant_id(1), "--scope", ARM, "--url", url) == 0
    printed = capsys.readouterr().out.strip()
    claims = jwt.decode(printed, options={"verify_signature": False})
    assert claims["tid"] == tenant_id(1) and claims["aud"] == "https://management.azure.com"
    assert await cli("token", "gdap", "--tenant", tenant_id(2), "--url", url) == 1
    err = capsys.readouterr().err
    assert "consent_required" in err and "AADSTS65001" in err and err.count("\n") == 1
    assert (
        await cli("token", "gdap", "--tenant", tenant_id(1), "--kind", "partner", "--url", url) == 1
    )
    assert "bad_kind" in capsys.readouterr().err
    # --scope alone asks the profile's own tenant: ARM is not in this profile's scopes.
    assert await cli("token", "gdap", "--scope", ARM, "--url", url) == 1
    assert "scope_not_allowed" in capsys.readouterr().err
    assert await cli("tenants", "gdap", "--url", url) == 0
    out = capsys.readouterr().out
    assert tenant_id(1) in out and "consent_required (AADSTS65001)" in out and printed not in out
    assert await cli("tenants", "gdap", "--json", "--url", url) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 1
    assert await cli("token", "gdap", "--kind", "aad", "--url", url) == 0
    capsys.readouterr()
    await cli("status", "--url", url)
    out = capsys.readouterr().out
    assert "warning: gdap: its Azure AD token shows no MFA" in out
    assert "gdap: customer tenants:" in out and "1 ok" in out
    config = tmp_path / "config.toml"
    config.write_text(
        '[server]\nlisten = ["127.0.0.1:8721"]\n[msi]\nidentity_header_env = "H"\n'
        "[profiles.default]\ntenant_id = 't'\nclient_id = 'c'\nclient_secret_env = 'S'\n"
    )
    monkeypatch.setenv("H", "header-value-123")
    assert await cli("msi-env", "--tenant", "Fabrikam.Example", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "IDENTITY_ENDPOINT=http://127.0.0.1:8721/msi/tenants/fabrikam.example/token" in out
    assert await cli("msi-env", "--tenant", "common", "--config", str(config)) == 2


async def test_a_held_back_refresh_token_is_written_at_shutdown(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """A burst ends with the broker stopping before the coalesced write-back: close() writes
    the newest rotated refresh token."""
    fake_sandbox.state.revoke_rotated = True  # only the newest is left unspent
    for i in range(3):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    for i in range(3):
        assert (await token(b, tenant_id(i))).status == 200
    held = gdap_fake.rt_file.read_text().strip()
    await b.broker.close()
    newest = gdap_fake.rt_file.read_text().strip()
    assert newest != held and gdap_fake.app.refresh_tokens == {newest}


# -- the cache, one behaviour at a time: a fake clock, the sandbox or the hostile fake ---------


WALL = 1_800_000_000.25  # the fake wall clock's start: a quarter second past a whole second


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_start=WALL)


@pytest.fixture
def gdap_fake(fake_sandbox, secret, tmp_path):
    """gdap_settings against the sandbox on the fake clock."""
    return gdap_settings(fake_sandbox, secret, tmp_path)


def hostile_settings(h: Hostile, secret: str, tmp_path, extra: str = ""):
    from broker.config.load import parse_settings

    rt_file = tmp_path / "refresh-token"
    rt_file.write_text("a-refresh-token-for-the-hostile-fake\n")
    rt_file.chmod(0o600)
    os.utime(rt_file, (WALL, WALL))  # placed "now" by the fake clock (the keep-alive reads it)
    text = config_text(
        h, profiles="[profiles.default]\nwarm = false\n" + gdap_profile(rt_file, extra=extra)
    )
    return parse_settings(text, env={"TEST_CLIENT_SECRET": secret})


def events(b, event: str) -> list[dict]:
    """The broker's JSON log lines for `event`, in order."""
    lines = [json.loads(x) for x in b.logs.getvalue().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == event]


async def metric(b, name: str, **labels: str) -> float | None:
    """One sample of /metrics by name and exact labels (in any order), or None."""
    text = await (await b.client.get("/metrics")).text()
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return None


async def listing(b) -> dict:
    r = await b.get("/v1/tenants/gdap")
    assert r.status == 200
    return await r.json()


def rows(page: dict) -> dict[str, dict]:
    return {row["tenant"]: row for row in page["tenants"]}


# -- reading Azure AD's error bodies ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        # error_codes wins over the description's code when both are there
        (b'{"error_codes": [65001], "error_description": "AADSTS50076: MFA"}', [65001]),
        # at most eight codes, from either place
        (
            json.dumps({"error_codes": list(range(50001, 50010))}).encode(),
            list(range(50001, 50009)),
        ),
        (
            json.dumps(
                {"error_description": " ".join(f"AADSTS{c}" for c in range(50001, 50010))}
            ).encode(),
            list(range(50001, 50009)),
        ),
        # only the first 2,000 characters of a description are searched
        (json.dumps({"error_description": "x" * 1990 + "AADSTS9000"}).encode(), [9000]),
        (json.dumps({"error_description": "x" * 1991 + "AADSTS9000"}).encode(), []),
    ],
)
def test_aadsts_codes_prefer_error_codes_and_read_a_bounded_amount(body: bytes, codes: list[int]):
    assert aadsts_codes(body) == codes


def test_a_429_is_throttling_whatever_its_codes_say():
    assert classify(429, []) is THROTTLED
    assert classify(429, [65001]) is THROTTLED
    assert classify(430, []) is None and classify(400, [12345]) is None


def test_a_users_tenant_token_is_shared_apart_from_the_apps(sandbox, secret, tmp_path):
    rt_file = tmp_path / "rt"
    rt_file.write_text("x\n")
    settings = make_settings(
        sandbox,
        secret,
        profiles=gdap_profile(rt_file)
        + '[profiles.app]\ncustomer_tenants = ["*"]\ncustomer_scopes = ["s/.default"]\n',
    )
    user, app = settings.profiles["gdap"], settings.profiles["app"]
    t = tenant_id(1)
    assert shared_key(user, credential="c", tenant=t, scope=GRAPH)[:3] == (
        CLIENT_ID,
        t,
        f"user {GRAPH}",
    )
    assert shared_key(app, credential="c", tenant=t, scope=GRAPH)[:3] == (CLIENT_ID, t, GRAPH)


def test_a_new_limiter_has_no_holders_and_no_peak():
    limiter = FifoLimiter(3)
    assert (limiter.active, limiter.peak, limiter.queued, limiter.limit) == (0, 0, 0, 3)


# -- refusals the sandbox never sends: the hostile fake ------------------------------------------

TRACE = "0c0ffee0-0000-4000-8000-000000000001"
CORR = "0c0ffee0-0000-4000-8000-000000000002"


async def test_a_429_without_a_throttling_code_is_throttled_with_azure_ads_own_ids(
    hostile, secret, tmp_path, start_broker, clock
):
    """A 429 whose only code is one the broker does not classify: still throttled (503, the
    whole tenant), reported with that code, Azure AD's status, trace id and correlation id."""

    async def aad(request: web.Request) -> web.Response:
        body = {
            "error": "temporarily_unavailable",
            "error_description": "AADSTS90033: A transient error has occurred.",
            "error_codes": [90033],
            "trace_id": TRACE,
            "correlation_id": CORR,
        }
        return web.json_response(body, status=429)

    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1))
    error = (await r.json())["error"]
    assert r.status == 503
    assert error == {
        "code": "throttled",
        "message": error["message"],
        "upstream_status": 429,
        "correlation_id": CORR,
        "aadsts": 90033,
        "trace_id": TRACE,
    }
    assert "AADSTS90033" in error["message"]
    # The whole tenant waits: another of its scopes is answered from memory, the same ids.
    r = await token(b, tenant_id(1), ARM)
    again = (await r.json())["error"]
    assert r.status == 503 and hostile.calls["aad"] == 1
    assert {k: v for k, v in again.items()} == error
    failed = events(b, "refresh_failed")
    assert [(x["tenant"], x["scope"], x["endpoint"]) for x in failed] == [
        (tenant_id(1), GRAPH, "aad"),
        (tenant_id(1), ARM, "aad"),
    ]
    assert [x["trace_id"] for x in failed] == [TRACE, TRACE]


async def test_the_aadsts_code_reported_is_the_one_that_classified_the_refusal(
    hostile, secret, tmp_path, start_broker, clock
):
    """Azure AD lists two codes, an unknown one first: the refusal is consent_required and the
    code reported with it is 65001, not the first listed. With no correlation id of Azure AD's
    own, the one the broker sent is reported."""
    sent: list[str] = []

    async def aad(request: web.Request) -> web.Response:
        sent.append(request.headers["client-request-id"])
        body = {"error": "invalid_grant", "error_codes": [50058, 65001]}
        return web.json_response(body, status=400)

    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1))
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "consent_required" and error["aadsts"] == 65001
    assert error["upstream_status"] == 400 and error["correlation_id"] == sent[0]
    (line,) = events(b, "customer_tenant_refused")
    assert (line["state"], line["aadsts"], line["reach"]) == ("consent_required", 65001, "entry")


async def test_an_unclassified_refusal_keeps_the_broker_correlation_id(
    hostile, secret, tmp_path, start_broker, clock
):
    sent: list[str] = []

    async def aad(request: web.Request) -> web.Response:
        sent.append(request.headers["client-request-id"])
        return web.json_response({"error": "invalid_client"}, status=401)

    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1))
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "upstream_refused"
    assert error["correlation_id"] == sent[0] and error["upstream_status"] == 401


async def test_a_garbled_200_is_a_bad_token_from_aad_with_the_broker_correlation_id(
    hostile, secret, tmp_path, start_broker, clock
):
    sent: list[str] = []

    async def aad(request: web.Request) -> web.Response:
        sent.append(request.headers["client-request-id"])
        return web.Response(status=200, content_type="application/json", text='{"access_to')

    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1))
    error = (await r.json())["error"]
    assert r.status == 502 and error["correlation_id"] == sent[0]
    (line,) = events(b, "refresh_failed")
    assert line["endpoint"] == "aad" and line["correlation_id"] == sent[0]
    assert await metric(b, "broker_upstream_requests_total", endpoint="aad", outcome="bad_token")


async def test_a_hung_azure_ad_times_out_after_upstream_timeout(
    hostile, secret, tmp_path, start_broker
):
    """Azure AD never answers: the fetch itself gives up after the profile's upstream_timeout
    (the entry records the failure), not only the caller's wait."""
    release = asyncio.Event()

    async def aad(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"error": "late"}, status=500)

    hostile.aad = aad
    b = await start_broker(
        hostile_settings(hostile, secret, tmp_path, extra="upstream_timeout = 0.3\n")
    )
    try:
        r = await token(b, tenant_id(1))
        assert r.status == 504 and (await r.json())["error"]["code"] == "upstream_timeout"
        entry = b.broker.tenants["gdap"].lookup(tenant_id(1), GRAPH)
        if entry.flight is not None:  # generous: only a fetch without a timeout stays here
            await asyncio.wait({entry.flight}, timeout=20)
        assert entry.flight is None and entry.last_error is not None
        assert entry.last_error.code == "upstream_timeout"
        assert entry.last_error.message == "no answer within 0.3 s"
    finally:
        release.set()


# -- refusals remembered: how long, how far, what the listing says -----------------------------


def http_date(wall: float) -> str:
    return email.utils.formatdate(wall, usegmt=True)


async def test_throttling_holds_the_whole_profile_for_its_retry_after_to_the_tenth(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """429s whose Retry-After is an HTTP date 119.75 s away, from three tenants (THROTTLE_SPREAD)
    within a minute: every tenant of the profile is answered from memory for exactly that long;
    the log, the listing's profile block and each tenant's next attempt say 119.8 s (tenths); at
    the end the entries' own retries go upstream."""
    for i in (1, 2, 3, 4):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    cache = b.broker.tenants["gdap"]
    assert (await token(b, tenant_id(2))).status == 200
    fake_sandbox.state.fail("aad", 429, retry_after=http_date(WALL - 0.25 + 120), times=3)
    for i in (3, 4, 1):
        r = await token(b, tenant_id(i))
        error = (await r.json())["error"]
        assert r.status == 503 and r.headers["Retry-After"] == "120"
    assert (error["code"], error["aadsts"], error["upstream_status"]) == ("throttled", 50196, 429)
    lines = events(b, "customer_tenant_refused")
    assert [(x["tenant"], x["reach"]) for x in lines] == [
        (tenant_id(3), "tenant"),
        (tenant_id(4), "tenant"),
        (tenant_id(1), "profile"),
    ]
    line = lines[-1]
    del line["timestamp"]
    assert line == {
        "tenant": tenant_id(1),
        "state": "throttled",
        "aadsts": 50196,
        "reach": "profile",
        "cooldown_s": 119.8,
        "profile": "gdap",
        "kind": "tenant",
        "event": "customer_tenant_refused",
        "level": "warning",
    }
    detail = {
        "code": "throttled",
        "aadsts": 50196,
        "message": error["message"],
        "upstream_status": 429,
        "correlation_id": error["correlation_id"],
    }
    page = await listing(b)
    # For `doctor`: Azure AD's trace id, and since when (the fake clock's wall time).
    told = page["profile_block"]["last_error"]
    assert uuid.UUID(told["trace_id"]) and WALL <= told["since"] <= clock.time()
    detail.update(trace_id=told["trace_id"], since=told["since"])
    assert page["profile_block"] == {"state": "throttled", "retry_in": 119.8, "last_error": detail}
    assert rows(page)[tenant_id(2)] == {
        "tenant": tenant_id(2),
        "state": "throttled",
        "tokens": 1,
        "scopes": {GRAPH: {"state": "fresh", "expires_in": 3598}},
        "failures_in_row": 0,
        "last_error": None,
        "next_attempt_in": 119.8,
    }
    assert rows(page)[tenant_id(1)] == {
        "tenant": tenant_id(1),
        "state": "throttled",
        "tokens": 0,
        "scopes": {GRAPH: {"state": "failing", "expires_in": None}},
        "failures_in_row": 1,
        "last_error": detail,
        "next_attempt_in": 120,
    }
    assert cache.states() == {"throttled": 4}
    clock.advance(100)
    page = await listing(b)
    assert page["profile_block"]["retry_in"] == 19.8
    assert rows(page)[tenant_id(2)]["next_attempt_in"] == 19.8
    # Half a second before the end, and at the very end (tenant 2 has no failure of its own).
    state = cache.tenants[tenant_id(2)]
    until = cache.memory.block.until
    described = views.describe(cache.memory, state, until - 0.5)
    assert (described["state"], described["next_attempt_in"]) == ("throttled", 0.5)
    described = views.describe(cache.memory, state, until)
    assert (described["state"], described["next_attempt_in"]) == ("ok", None)
    r = await token(b, tenant_id(2), ARM)  # a new entry: held by the profile block
    assert r.status == 503 and fake_sandbox.state.counts["aad"] == 4
    clock.advance(until - clock.monotonic())
    assert clock.monotonic() == until
    assert cache.profile_block() is None
    # What is left is each tenant's and entry's own memory of the refusal, until its retry.
    assert cache.states() == {"throttled": 4}
    # The entries' own retries fire at the end of the cool-down: upstream at once.
    await asyncio.wait_for(fake_sandbox.state.wait_calls("aad", 5), 10)


async def test_a_one_second_retry_after_is_one_second_and_retried_soon(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """Throttling is worth retrying: with Retry-After 1 (three tenants: the profile) the profile
    waits one second and the caller is told to come back in 2 s (the shortest memory of a
    failure), not 15."""
    for i in (1, 2, 3):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    fake_sandbox.state.fail("aad", 429, retry_after="1", times=3)
    for i in (1, 2, 3):
        r = await token(b, tenant_id(i))
        assert r.status == 503 and r.headers["Retry-After"] == "2"
    assert (await listing(b))["profile_block"]["retry_in"] == 1.0


async def test_a_tenant_wide_refusal_is_told_again_with_its_own_ids_until_it_ends(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """MFA required in one tenant (AADSTS50076, 600 s, the whole tenant): its other scopes are
    answered from memory with the first answer's message, status, codes and ids; the log says
    where; exactly at 600 s the entries go upstream again."""
    fake_sandbox.state.register_customer(tenant_id(1), require_mfa=True)
    gdap_fake.app.mfa = False
    b = await start_broker(gdap_fake(), clock=clock)
    r = await token(b, tenant_id(1), GRAPH)
    first = (await r.json())["error"]
    assert r.status == 502 and first["code"] == "interaction_required"
    assert first["trace_id"] and first["correlation_id"] and first["upstream_status"] == 400
    r = await token(b, tenant_id(1), ARM)
    again = (await r.json())["error"]
    assert r.status == 502 and again == first
    assert fake_sandbox.state.counts["aad"] == 1
    (line,) = events(b, "customer_tenant_refused")
    assert (line["reach"], line["cooldown_s"], line["tenant"]) == ("tenant", 600.0, tenant_id(1))
    failed = events(b, "refresh_failed")
    assert [(x["tenant"], x["scope"], x["endpoint"], x["error"]) for x in failed] == [
        (tenant_id(1), GRAPH, "aad", "interaction_required"),
        (tenant_id(1), ARM, "aad", "interaction_required"),
    ]
    assert failed[1]["message"] == first["message"]
    assert failed[1]["upstream_status"] == 400 and failed[1]["trace_id"] == first["trace_id"]
    row = rows(await listing(b))[tenant_id(1)]
    assert (row["state"], row["failures_in_row"], row["next_attempt_in"]) == (
        "interaction_required",
        1,  # a refusal told again from memory is not another failure
        600,
    )
    clock.advance(600)
    await asyncio.wait_for(fake_sandbox.state.wait_calls("aad", 2), 10)


async def test_a_new_refresh_token_lifts_a_dead_token_block_but_not_a_tenants_own(
    fake_sandbox, gdap_fake, start_broker, clock
):
    fake_sandbox.state.register_customer(tenant_id(1), require_mfa=True)
    fake_sandbox.state.register_customer(tenant_id(2))
    app = gdap_fake.app
    app.mfa = False
    b = await start_broker(gdap_fake(), clock=clock)
    assert (await (await token(b, tenant_id(1))).json())["error"]["code"] == "interaction_required"
    app.refresh_token_refusal = 700082
    r = await token(b, tenant_id(2))
    assert (await r.json())["error"]["code"] == "refresh_token_invalid"
    assert fake_sandbox.state.counts["aad"] == 3  # and the partner tenant's, confirming it
    app.refresh_token_refusal = None
    replace_file(gdap_fake.rt_file, fake_sandbox.state.issue_refresh_token(app) + "\n")
    r = await token(b, tenant_id(1), ARM)  # the tenant's own refusal still holds
    assert (await r.json())["error"]["code"] == "interaction_required"
    assert fake_sandbox.state.counts["aad"] == 3
    assert (await token(b, tenant_id(2), ARM)).status == 200  # the new token is tried
    assert fake_sandbox.state.counts["aad"] == 4


async def test_a_new_refresh_token_does_not_lift_throttling(
    fake_sandbox, gdap_fake, start_broker, clock
):
    for i in (1, 2, 3, 4):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    fake_sandbox.state.fail("aad", 429, retry_after="120", times=3)
    for i in (1, 2, 3):
        assert (await token(b, tenant_id(i))).status == 503
    replace_file(gdap_fake.rt_file, fake_sandbox.state.issue_refresh_token(gdap_fake.app) + "\n")
    r = await token(b, tenant_id(4))
    assert r.status == 503 and (await r.json())["error"]["code"] == "throttled"
    assert fake_sandbox.state.counts["aad"] == 3


def replace_file(path, text: str) -> None:
    """A new file in its place (a new inode), as an operator's tooling would write it."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.chmod(0o600)
    os.replace(new, path)


async def test_failures_in_a_row_count_up_and_a_success_clears_them(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """An unclassified refusal: the tenant is failing (not a refusal class), with the error's
    details and the next attempt; the count goes up per failure, a success clears the lot."""
    fake_sandbox.state.register_customer(tenant_id(1))
    b = await start_broker(gdap_fake(), clock=clock)
    cache = b.broker.tenants["gdap"]
    fake_sandbox.state.fail("aad", 401, times=2)
    r = await token(b, tenant_id(1))
    error = (await r.json())["error"]
    assert r.status == 502 and error["code"] == "upstream_refused"
    detail = {
        "code": "upstream_refused",
        "aadsts": 7000215,
        "message": error["message"],
        "upstream_status": 401,
        "correlation_id": error["correlation_id"],
        "trace_id": error["trace_id"],
        "since": clock.time(),  # the streak began now
    }
    assert rows(await listing(b))[tenant_id(1)] == {
        "tenant": tenant_id(1),
        "state": "failing",
        "tokens": 0,
        "scopes": {GRAPH: {"state": "failing", "expires_in": None}},
        "failures_in_row": 1,
        "last_error": detail,
        "next_attempt_in": 15,
    }
    assert await metric(b, "broker_customer_tenants", profile="gdap", state="failing") == 1.0
    entry = cache.lookup(tenant_id(1), GRAPH)
    clock.advance(15)  # the retry: refused again
    await asyncio.wait_for(fake_sandbox.state.wait_calls("aad", 2), 10)
    if entry.flight is not None:
        await asyncio.wait({entry.flight}, timeout=10)
    row = rows(await listing(b))[tenant_id(1)]
    assert (row["failures_in_row"], row["next_attempt_in"]) == (2, 30)
    assert row["last_error"]["since"] == detail["since"]  # the same streak, dated from its start
    clock.advance(30)  # the next retry succeeds
    await asyncio.wait_for(fake_sandbox.state.wait_calls("aad", 3), 10)
    if entry.flight is not None:
        await asyncio.wait({entry.flight}, timeout=10)
    row = rows(await listing(b))[tenant_id(1)]
    assert (row["state"], row["failures_in_row"], row["last_error"]) == ("ok", 0, None)
    assert row["next_attempt_in"] is None and row["tokens"] == 1


# -- what the listing, the logs and /metrics say about healthy tenants -----------------------------


async def test_healthy_tenants_are_listed_logged_and_counted_exactly(
    fake_sandbox, gdap_fake, start_broker, clock
):
    for i in (1, 2):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    cache = b.broker.tenants["gdap"]
    for t, s in ((tenant_id(1), GRAPH), (tenant_id(1), ARM), (tenant_id(2), GRAPH)):
        assert (await token(b, t, s)).status == 200
    fresh = {"state": "fresh", "expires_in": 3598}
    page = await listing(b)
    assert rows(page)[tenant_id(1)] == {
        "tenant": tenant_id(1),
        "state": "ok",
        "tokens": 2,
        "scopes": {GRAPH: fresh, ARM: fresh},
        "failures_in_row": 0,
        "last_error": None,
        "next_attempt_in": None,  # a refresh ahead is scheduled, but nothing is being retried
    }
    assert page["profile_block"] is None and page["next"] is None
    assert cache.states() == {"ok": 2}
    assert await metric(b, "broker_customer_tenants", profile="gdap", state="ok") == 2.0
    assert (
        await metric(b, "broker_refreshes_total", profile="gdap", kind="tenant", outcome="ok")
        == 3.0
    )
    assert await metric(b, "broker_upstream_requests_total", endpoint="aad", outcome="ok") == 3.0
    refreshed = events(b, "token_refreshed")
    assert [(x["tenant"], x["scope"], x["profile"], x["kind"]) for x in refreshed] == [
        (tenant_id(1), GRAPH, "gdap", "tenant"),
        (tenant_id(1), ARM, "gdap", "tenant"),
        (tenant_id(2), GRAPH, "gdap", "tenant"),
    ]
    assert all(x["correlation_id"] and x["lifetime_s"] == 3599 for x in refreshed)
    assert list(cache.iter_entries()) == [
        cache.lookup(tenant_id(1), GRAPH),
        cache.lookup(tenant_id(1), ARM),
        cache.lookup(tenant_id(2), GRAPH),
    ]
    # A page of exactly the tenants left has no next page.
    r = await b.get("/v1/tenants/gdap", params={"limit": "2"})
    assert (await r.json())["next"] is None
    # Invalidation: logged with the tenant and what was dropped; an unknown tenant drops 0.
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(1)}/invalidate", headers=HEADERS)
    assert r.status == 200 and (await r.json())["tokens_dropped"] == 2
    (line,) = events(b, "tenant_invalidated")
    assert (line["tenant"], line["tokens"], line["profile"], line["kind"]) == (
        tenant_id(1),
        2,
        "gdap",
        "tenant",
    )
    assert cache.invalidate(tenant_id(9)) == 0 and len(events(b, "tenant_invalidated")) == 1
    assert cache.invalidate(tenant_id(1)) == 0


async def test_a_tenant_with_entries_but_no_token_and_no_error_is_idle(
    fake_sandbox, gdap_fake, start_broker, clock
):
    b = await start_broker(gdap_fake(), clock=clock)
    cache = b.broker.tenants["gdap"]
    cache.entry(tenant_id(3), GRAPH)  # made, never fetched
    row = rows(await listing(b))[tenant_id(3)]
    assert row["state"] == "idle" and row["tokens"] == 0
    assert row["scopes"] == {GRAPH: {"state": "empty", "expires_in": None}}
    assert cache.states() == {"idle": 1}


async def test_a_tenant_wide_refusal_outlives_its_entries_until_its_end(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """max_customer_tokens = 2: the refused tenant's entry is evicted to make room for another
    scope of a known tenant, but the tenant still shows (and holds) its refusal for 600 s."""
    fake_sandbox.state.register_customer(tenant_id(1), require_mfa=True)
    fake_sandbox.state.register_customer(tenant_id(2))
    gdap_fake.app.mfa = False
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 2"), clock=clock)
    cache = b.broker.tenants["gdap"]
    assert (await token(b, tenant_id(2))).status == 200
    assert (await token(b, tenant_id(1))).status == 502
    assert (await token(b, tenant_id(2), ARM)).status == 200
    state = cache.tenants[tenant_id(1)]
    assert state.entries == {} and cache.evicted == 1
    until = state.block.until
    assert views.tenant_state(cache.memory, state, until - 0.1) == "interaction_required"
    assert views.tenant_state(cache.memory, state, until) == "idle"
    row = rows(await listing(b))[tenant_id(1)]
    assert (row["state"], row["next_attempt_in"], row["scopes"]) == (
        "interaction_required",
        600.0,
        {},
    )


# -- bounds: eviction and forgotten tenants ------------------------------------------------------


class GatedAzureAD:
    """The hostile fake's Azure AD: a token at once, or, for a gated tenant, when the test
    opens its gate. `arrived[t]` is set when tenant t's request is in."""

    def __init__(self, hostile: Hostile) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.n = 0
        hostile.aad = self.answer

    def gate(self, tenant: str) -> None:
        self.gates[tenant] = asyncio.Event()
        self.arrived[tenant] = asyncio.Event()

    async def answer(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant in self.gates:
            self.arrived[tenant].set()
            await self.gates[tenant].wait()
        self.n += 1
        return web.json_response(
            {"access_token": f"opaque-{self.n:05d}", "token_type": "Bearer", "expires_in": 3600}
        )


async def test_an_entry_with_a_fetch_in_flight_is_left_to_land(
    hostile, secret, tmp_path, start_broker, clock
):
    """max_customer_tokens = 2. The least recently used entry is mid-fetch: the next one is
    evicted instead, and the fetch lands for its caller. When every entry is mid-fetch, the least
    recently used goes anyway (its caller still gets the token)."""
    aad = GatedAzureAD(hostile)
    aad.gate(tenant_id(1))
    b = await start_broker(
        hostile_settings(hostile, secret, tmp_path, extra="max_customer_tokens = 2"), clock=clock
    )
    cache = b.broker.tenants["gdap"]
    first = asyncio.create_task(token(b, tenant_id(1)))
    await asyncio.wait_for(aad.arrived[tenant_id(1)].wait(), 10)
    assert (await token(b, tenant_id(2))).status == 200
    assert (await token(b, tenant_id(3))).status == 200  # evicts 2, not 1 (in flight)
    assert cache.lookup(tenant_id(2), GRAPH) is None
    assert cache.lookup(tenant_id(1), GRAPH) is not None and cache.evicted == 1
    aad.gate(tenant_id(4))
    fourth = asyncio.create_task(token(b, tenant_id(4)))  # evicts 3: 1 is still in flight
    await asyncio.wait_for(aad.arrived[tenant_id(4)].wait(), 10)
    assert cache.lookup(tenant_id(3), GRAPH) is None and cache.evicted == 2
    # Both left are in flight: a fifth tenant evicts the least recently used of them.
    assert (await token(b, tenant_id(5))).status == 200
    assert cache.evicted == 3 and len(cache) == 2
    assert cache.lookup(tenant_id(4), GRAPH) is not None
    assert await metric(b, "broker_customer_tokens_evicted_total", profile="gdap") == 3.0
    aad.gates[tenant_id(1)].set()
    aad.gates[tenant_id(4)].set()
    assert (await first).status == 200 and (await fourth).status == 200


async def test_an_entry_expiring_this_instant_is_evicted_before_a_live_older_one(
    fake_sandbox, gdap_fake, start_broker, clock
):
    for i in range(3):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 2"), clock=clock)
    cache = b.broker.tenants["gdap"]
    assert (await token(b, tenant_id(0))).status == 200
    fake_sandbox.state.lifetimes["aad"] = 1800
    assert (await token(b, tenant_id(1))).status == 200
    expires = cache.lookup(tenant_id(1), GRAPH).token.expires_mono
    clock.advance(expires - clock.monotonic())
    assert clock.monotonic() == expires  # tenant 1's token ends now; tenant 0's is older
    assert (await token(b, tenant_id(2))).status == 200
    assert cache.lookup(tenant_id(1), GRAPH) is None
    assert cache.lookup(tenant_id(0), GRAPH) is not None


async def test_eviction_looks_32_entries_deep_for_an_expired_one(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """33 entries, the 33rd least recently used expired: beyond the 32 looked at, so the least
    recently used live one goes."""
    for i in range(34):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 33"), clock=clock)
    cache = b.broker.tenants["gdap"]
    for i in range(32):
        assert (await token(b, tenant_id(i))).status == 200
    fake_sandbox.state.lifetimes["aad"] = 1800
    assert (await token(b, tenant_id(32))).status == 200
    clock.advance(1800)
    assert (await token(b, tenant_id(33))).status == 200
    assert cache.lookup(tenant_id(0), GRAPH) is None
    assert cache.lookup(tenant_id(32), GRAPH) is not None and cache.evicted == 1


async def test_tenants_with_nothing_cached_are_forgotten_beyond_the_bound(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """max_customer_tokens = 2: a third tenant evicts the oldest entry, and its tenant, left with
    nothing cached, is forgotten: two tenants remembered, not three."""
    for i in range(3):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 2"), clock=clock)
    cache = b.broker.tenants["gdap"]
    for i in range(3):
        assert (await token(b, tenant_id(i))).status == 200
    assert sorted(cache.tenants) == [tenant_id(1), tenant_id(2)]
    assert (await listing(b))["tenants_seen"] == 2


async def test_forgetting_empty_tenants_finds_one_at_any_depth(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """33 tenants with one entry each; the 33rd made is the least recently used and is
    evicted by a 34th, left empty at the 33rd place: forgotten all the same (it was kept, and
    records grew without bound, while only the 32 oldest were looked at: issue 23 item 5)."""
    for i in range(34):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(extra="max_customer_tokens = 33"), clock=clock)
    cache = b.broker.tenants["gdap"]
    for i in range(33):
        assert (await token(b, tenant_id(i))).status == 200
    for i in range(32):
        assert (await token(b, tenant_id(i))).status == 200  # hits: 32 is least recent
    assert list(cache.tenants)[32] == tenant_id(32) and fake_sandbox.state.counts["aad"] == 33
    assert (await token(b, tenant_id(33))).status == 200
    assert tenant_id(32) not in cache.tenants and tenant_id(33) in cache.tenants
    assert len(cache.tenants) == 33


# -- the cache's policy, callers' own margins, construction ----------------------------------------


async def test_tenant_entries_lapse_when_unused_even_in_a_warm_profile(
    fake_sandbox, secret, start_broker, clock, tmp_path
):
    """`warm = true` keeps the profile's own tokens fresh, never its customer tenants': an entry
    nobody asks for is not refreshed ahead, and expires."""
    fake_sandbox.state.register_customer(tenant_id(1))
    app = fake_sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(fake_sandbox.state.issue_refresh_token(app) + "\n")
    rt_file.chmod(0o600)
    profile = gdap_profile(rt_file).replace("warm = false\n", "warm = true\n")
    b = await start_broker(
        make_settings(
            fake_sandbox, secret, profiles="[profiles.default]\nwarm = false\n" + profile
        ),
        clock=clock,
    )
    assert (await token(b, tenant_id(1))).status == 200
    entry = b.broker.tenants["gdap"].lookup(tenant_id(1), GRAPH)
    assert not entry.policy.warm
    calls = fake_sandbox.state.customer_calls
    clock.advance(3000)  # past the refresh-ahead point
    await asyncio.sleep(0)
    assert entry.flight is None and calls[(tenant_id(1), "https://graph.microsoft.com")] == 1
    clock.advance(700)
    assert entry.peek() is None


async def test_an_msi_caller_gets_a_token_with_its_own_longer_margin(
    fake_sandbox, gdap_fake, secret, start_broker, clock, tmp_path, witness
):
    """/v1 serves a token down to the profile's min_remaining (30 s); the managed-identity face
    asks for its own (420 s): with 300 s left, /v1 gets the cached token, MSI a new one."""
    from broker.config.load import parse_settings

    fake_sandbox.state.register_customer(tenant_id(1))
    gdap_fake()  # the refresh token file
    text = config_text(
        fake_sandbox,
        profiles="[profiles.default]\nwarm = false\n" + gdap_profile(gdap_fake.rt_file),
    )
    text += f'\n[msi]\nprofile = "gdap"\ngenerated_header_file = "{tmp_path}/identity-header"\n'
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}), clock=clock)
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    first = await (await token(b, tenant_id(1))).json()
    clock.advance(3599 - 300)
    cached = await (await token(b, tenant_id(1))).json()
    assert cached["access_token"] == first["access_token"]
    calls = fake_sandbox.state.customer_calls
    assert calls[(tenant_id(1), "https://graph.microsoft.com")] == 1
    r = await b.client.get(
        f"/msi/tenants/{tenant_id(1)}/token",
        params={"api-version": "2019-08-01", "resource": "https://graph.microsoft.com"},
        headers={"X-IDENTITY-HEADER": header},
    )
    body = await r.json()
    assert r.status == 200 and body["access_token"] != first["access_token"]
    assert calls[(tenant_id(1), "https://graph.microsoft.com")] == 2


async def test_a_tenant_cache_without_a_shared_cache_fetches_from_azure_ad(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """TenantCache's `shared` is optional: without it, fetches go straight to Azure AD."""
    from broker.observe.logs import make_logger

    fake_sandbox.state.register_customer(tenant_id(1))
    b = await start_broker(gdap_fake(), clock=clock)
    own = TenantCache(
        b.broker.settings.profiles["gdap"],
        b.broker.credentials["gdap"],
        b.broker.upstream,
        clock=clock,
        log=make_logger(stream=io.StringIO()),
        metrics=b.broker.metrics,
        rand=lambda: 0.5,
    )
    value, hit, entry = await own.get(tenant_id(1), GRAPH)
    assert not hit and entry.token is value and fake_sandbox.state.counts["aad"] == 1
    assert (await own.get(tenant_id(1), GRAPH))[1] is True
    await own.close()


async def test_an_app_only_profile_signs_its_assertion_for_the_customers_token_url(
    sandbox, start_broker, tmp_path
):
    """A certificate credential serving customer tenants: the client assertion's audience is
    the customer tenant's token endpoint (Azure AD refuses any other), not the profile's own."""
    from tests.support import make_certificate, settings_for

    sandbox.state.register_customer(tenant_id(1))
    pem, cert = make_certificate()
    sandbox.state.apps[CLIENT_ID].certificate_pem = cert
    (tmp_path / "app.pem").write_bytes(pem)
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "certificate"
certificate_file = "{tmp_path}/app.pem"
warm = false
customer_tenants = ["*"]
customer_scopes = ["{GRAPH}"]
""",
    )
    b = await start_broker(settings)
    r = await b.get("/v1/token/default", params={"tenant": tenant_id(1)})
    assert r.status == 200, await r.text()
    call = next(c for c in sandbox.state.calls if c.path.startswith(f"/{tenant_id(1)}/"))
    assert call.status == 200 and call.form["client_assertion_type"].endswith("jwt-bearer")


# -- the rotated refresh token, and crashes, in a tenant fetch -------------------------------------


async def test_a_rotated_token_that_cannot_be_saved_is_logged_with_the_fetchs_correlation_id(
    hostile, secret, tmp_path, start_broker, clock
):
    """The refresh token file vanishes while a tenant fetch is in flight: the rotated token
    cannot be written back, and the error line names the fetch's correlation id."""
    sent: list[str] = []

    async def aad(request: web.Request) -> web.Response:
        sent.append(request.headers["client-request-id"])
        (tmp_path / "refresh-token").unlink()
        body = {"access_token": "opaque-1", "expires_in": 3600, "refresh_token": "rotated-1"}
        return web.json_response(body)

    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    assert (await token(b, tenant_id(1))).status == 200
    (line,) = events(b, "refresh_token_not_saved")
    assert line["correlation_id"] == sent[0]


async def test_a_crash_in_a_tenant_fetch_is_logged_with_its_tenant_and_scope(
    hostile, secret, tmp_path, start_broker, clock, monkeypatch
):
    """Something the broker did not expect goes wrong inside a tenant fetch (here: handling
    the rotated refresh token raises; a lone surrogate no longer does, it is refused: see
    tests/test_refresh_token_bounds.py): the caller gets a clean 503, and the log line with
    the traceback says which tenant and scope."""
    from broker.core.credentials import RotatingRefreshToken

    async def aad(request: web.Request) -> web.Response:
        text = '{"access_token": "opaque-1", "expires_in": 3600, "refresh_token": "rt-2"}'
        return web.Response(text=text, content_type="application/json")

    async def unexpected(*args: object, **kwargs: object) -> None:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(RotatingRefreshToken, "rotated", unexpected)
    hostile.aad = aad
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1), ARM)
    assert r.status == 503 and (await r.json())["error"]["message"].startswith("internal error")
    (line,) = events(b, "refresh_crashed")
    assert (line["tenant"], line["scope"], line["profile"], line["kind"]) == (
        tenant_id(1),
        ARM,
        "gdap",
        "tenant",
    )
    assert line["correlation_id"] and "Traceback" in line["exception"]


# -- single flight across an invalidation (issue 23 item 17) ---------------------------------------


async def until(condition, limit: int = 10_000) -> None:
    """Let the loop run until `condition()` holds (a bounded number of turns, no sleeping)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_invalidating_a_tenant_mid_fetch_keeps_one_azure_ad_call_per_key(
    hostile, secret, tmp_path, start_broker, clock
):
    """A fetch of (t, Graph) is in flight; the operator invalidates t; four callers ask again.
    The invalidated fetch lands for the caller who asked before (its answer is not kept); the
    four share exactly one new Azure AD call, which starts only when the first has landed:
    2 calls in all, never 2 at once for the key."""
    aad = GatedAzureAD(hostile)
    aad.gate(tenant_id(1))
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    cache = b.broker.tenants["gdap"]
    first = asyncio.create_task(token(b, tenant_id(1)))
    await asyncio.wait_for(aad.arrived[tenant_id(1)].wait(), 10)
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(1)}/invalidate", headers=HEADERS)
    assert r.status == 200 and (await r.json())["tokens_dropped"] == 1
    again = [asyncio.create_task(token(b, tenant_id(1))) for _ in range(4)]
    await until(lambda: (e := cache.lookup(tenant_id(1), GRAPH)) is not None and e.waiters == 4)
    await asyncio.sleep(0)  # the new flight's first step (queued before us) has run
    assert cache.limiter.active == 1 and hostile.calls["aad"] == 1
    aad.gates[tenant_id(1)].set()
    answers = [await t for t in (first, *again)]
    tokens = [(await r.json())["access_token"] for r in answers]
    assert tokens == ["opaque-00001"] + ["opaque-00002"] * 4
    assert hostile.calls["aad"] == 2 and cache.limiter.peak == 1
    assert cache.lookup(tenant_id(1), GRAPH).token.value == "opaque-00002"


# -- one tenant's refusal reaches that tenant (issue 23 item 7) ----------------------------------


class OneBadTenant:
    """The hostile fake's Azure AD: `bad` tenants get `refusal` (status, body, headers), every
    other tenant (the partner's own too) a token. Calls are counted by tenant."""

    def __init__(self, hostile: Hostile, refusal: tuple[int, dict, dict], *bad: str) -> None:
        self.refusal, self.bad = refusal, set(bad)
        self.calls: dict[str, int] = {}
        hostile.aad = self.answer

    async def answer(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        self.calls[tenant] = self.calls.get(tenant, 0) + 1
        if tenant in self.bad:
            status, body, headers = self.refusal
            return web.json_response(body, status=status, headers=headers)
        return web.json_response(
            {"access_token": f"opaque-{tenant}", "token_type": "Bearer", "expires_in": 3600}
        )


THROTTLING = {
    "429, Retry-After 600": (429, {"error": "temporarily_unavailable"}, {"Retry-After": "600"}),
    "error_codes [50196]": (400, {"error": "invalid_request", "error_codes": [50196]}, {}),
}
DEAD_TOKEN = {
    "error_codes [700082]": (400, {"error": "invalid_grant", "error_codes": [700082]}, {}),
    "text AADSTS50173": (
        400,
        {"error": "invalid_grant", "error_description": "AADSTS50173: The grant was revoked."},
        {},
    ),
}


@pytest.mark.parametrize("refusal", THROTTLING.values(), ids=THROTTLING.keys())
async def test_one_tenant_throttled_blocks_that_tenant_only(
    hostile, secret, tmp_path, start_broker, clock, refusal
):
    """One customer tenant is throttled: it is answered from memory (all its scopes), while a
    healthy tenant nobody fetched before is served from Azure AD at once."""
    aad = OneBadTenant(hostile, refusal, tenant_id(1))
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    r = await token(b, tenant_id(1))
    assert r.status == 503 and (await r.json())["error"]["code"] == "throttled"
    r = await token(b, tenant_id(1), ARM)
    assert r.status == 503 and aad.calls[tenant_id(1)] == 1
    r = await token(b, tenant_id(2))
    assert r.status == 200 and (await r.json())["access_token"] == f"opaque-{tenant_id(2)}"
    page = await listing(b)
    assert page["profile_block"] is None
    assert {t: row["state"] for t, row in rows(page).items()} == {
        tenant_id(1): "throttled",
        tenant_id(2): "ok",
    }


async def test_throttling_spread_over_three_tenants_blocks_the_profile_until_one_is_invalidated(
    hostile, secret, tmp_path, start_broker, clock
):
    """Two tenants throttled: the others are served. A third within the minute (THROTTLE_SPREAD,
    THROTTLE_WINDOW): Azure AD is throttling the app, every tenant waits with no call. The
    operator invalidates one of the three: what it caused is lifted, the others are served."""
    aad = OneBadTenant(hostile, THROTTLING["429, Retry-After 600"], *map(tenant_id, (1, 2, 3)))
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    for i in (1, 2):
        assert (await token(b, tenant_id(i))).status == 503
    assert (await token(b, tenant_id(9))).status == 200
    clock.advance(59)
    assert (await token(b, tenant_id(3))).status == 503
    r = await token(b, tenant_id(8))
    assert r.status == 503 and int(r.headers["Retry-After"]) == 600
    assert tenant_id(8) not in aad.calls
    assert (await listing(b))["profile_block"]["state"] == "throttled"
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(3)}/invalidate", headers=HEADERS)
    assert r.status == 200
    assert (await listing(b))["profile_block"] is None
    assert (await token(b, tenant_id(8))).status == 200
    assert (await token(b, tenant_id(1), ARM)).status == 503  # still its own block
    assert aad.calls[tenant_id(1)] == 1


async def test_throttling_outside_the_window_stays_with_each_tenant(
    hostile, secret, tmp_path, start_broker, clock
):
    OneBadTenant(hostile, THROTTLING["429, Retry-After 600"], *map(tenant_id, (1, 2, 3)))
    b = await start_broker(hostile_settings(hostile, secret, tmp_path), clock=clock)
    for i in (1, 2, 3):
        assert (await token(b, tenant_id(i))).status == 503
        clock.advance(61)  # three tenants, but never two within 60 s
    assert (await token(b, tenant_id(9))).status == 200
    assert (await listing(b))["profile_block"] is None


@pytest.mark.parametrize("refusal", DEAD_TOKEN.values(), ids=DEAD_TOKEN.keys())
async def test_one_tenants_dead_token_verdict_is_checked_with_the_partners_own_tenant(
    hostile, secret, tmp_path, start_broker, clock, refusal
):
    """One customer tenant says the refresh token is dead; the partner's own tenant (one call)
    gives a token with it: the verdict stays with that tenant, and a healthy tenant nobody
    fetched before is served from Azure AD. Invalidating the tenant lifts its verdict."""
    aad = OneBadTenant(hostile, refusal, tenant_id(1))
    settings = hostile_settings(hostile, secret, tmp_path)
    partner = settings.profiles["gdap"].tenant_id
    b = await start_broker(settings, clock=clock)
    r = await token(b, tenant_id(1))
    assert r.status == 502 and (await r.json())["error"]["code"] == "refresh_token_invalid"
    assert aad.calls == {tenant_id(1): 1, partner: 1}
    (verdict,) = events(b, "refresh_token_verdict")
    assert (verdict["verdict"], verdict["reach"]) == ("refuted", "tenant")
    assert (await token(b, tenant_id(1), ARM)).status == 502  # the tenant remembers
    r = await token(b, tenant_id(2))
    assert r.status == 200 and (await r.json())["access_token"] == f"opaque-{tenant_id(2)}"
    assert aad.calls == {tenant_id(1): 1, partner: 1, tenant_id(2): 1}
    assert (await listing(b))["profile_block"] is None
    aad.bad.clear()
    r = await b.client.post(f"/v1/tenants/gdap/{tenant_id(1)}/invalidate", headers=HEADERS)
    assert r.status == 200
    assert (await token(b, tenant_id(1), ARM)).status == 200


async def test_a_dead_token_verdict_confirmed_by_the_partners_tenant_reaches_the_profile(
    hostile, secret, tmp_path, start_broker, clock
):
    """Five tenants say the refresh token is dead at once, and so does the partner's own
    tenant: one confirming call for the five, then every tenant waits with no call."""
    settings = hostile_settings(hostile, secret, tmp_path)
    partner = settings.profiles["gdap"].tenant_id
    bad = [tenant_id(i) for i in range(5)]
    aad = OneBadTenant(hostile, DEAD_TOKEN["error_codes [700082]"], partner, *bad)
    b = await start_broker(settings, clock=clock)
    answers = await asyncio.gather(*(token(b, t) for t in bad))
    assert {r.status for r in answers} == {502}
    assert aad.calls == {partner: 1, **{t: 1 for t in bad}}
    (verdict,) = events(b, "refresh_token_verdict")
    assert (verdict["verdict"], verdict["reach"]) == ("confirmed", "profile")
    r = await token(b, tenant_id(9))
    assert r.status == 502 and (await r.json())["error"]["code"] == "refresh_token_invalid"
    assert tenant_id(9) not in aad.calls
    assert (await listing(b))["profile_block"]["state"] == "refresh_token_invalid"


# -- a slow customer never slows another (issue 23 item 8) ---------------------------------------


class HungAzureAD:
    """The hostile fake's Azure AD: `hung` tenants never answer (until the test ends), others
    get a token at once. `arrived[t]` counts each tenant's calls that came in."""

    def __init__(self, hostile: Hostile, *hung: str) -> None:
        self.hung = set(hung)
        self.release = asyncio.Event()
        self.arrived: dict[str, int] = {}
        self.came = asyncio.Condition()
        hostile.aad = self.answer

    async def answer(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        async with self.came:
            self.arrived[tenant] = self.arrived.get(tenant, 0) + 1
            self.came.notify_all()
        if tenant in self.hung:
            await self.release.wait()
        return web.json_response(
            {"access_token": f"opaque-{tenant}", "token_type": "Bearer", "expires_in": 3600}
        )

    async def wait_for(self, count: int) -> None:
        async with self.came:
            await asyncio.wait_for(
                self.came.wait_for(lambda: sum(self.arrived.values()) >= count), 10
            )


async def test_tenants_hanging_in_every_slot_do_not_time_out_a_healthy_tenant(
    hostile, secret, tmp_path, start_broker
):
    """Azure AD hangs for as many tenants as upstream_concurrency (2): a healthy tenant's cold
    fetch gets its slot when the hung calls pass their slot deadline (a quarter of the 2 s
    upstream_timeout), so it is served, not queued into a 504. The hung ones time out alone."""
    aad = HungAzureAD(hostile, tenant_id(1), tenant_id(2))
    extra = "upstream_concurrency = 2\nupstream_timeout = 2\n"
    b = await start_broker(hostile_settings(hostile, secret, tmp_path, extra=extra))
    try:
        hung = [asyncio.create_task(token(b, tenant_id(i))) for i in (1, 2)]
        await aad.wait_for(2)
        r = await token(b, tenant_id(3))
        assert r.status == 200 and (await r.json())["access_token"] == f"opaque-{tenant_id(3)}"
        assert [(await t).status for t in hung] == [504, 504]
    finally:
        aad.release.set()


async def test_one_tenant_holds_at_most_its_share_of_the_slots(
    hostile, secret, tmp_path, start_broker
):
    """upstream_concurrency = 2, so one tenant's share is one slot: a tenant hanging on three
    scopes has one call in flight, and another tenant is served from the other slot while the
    hung call is well within its deadline."""
    aad = HungAzureAD(hostile, tenant_id(1))
    extra = "upstream_concurrency = 2\nupstream_timeout = 60\n"
    settings = hostile_settings(hostile, secret, tmp_path, extra=extra)
    now = time.time()  # the real clock here: a file placed at WALL would be in the future,
    os.utime(tmp_path / "refresh-token", (now, now))  # which the keep-alive does not believe
    b = await start_broker(settings)
    cache = b.broker.tenants["gdap"]
    try:
        hung = [asyncio.create_task(token(b, tenant_id(1), s)) for s in SCOPES]
        await aad.wait_for(1)
        await until(lambda: cache.limiter.queued + cache.limiter.active == 3)
        r = await token(b, tenant_id(2))
        assert r.status == 200
        assert aad.arrived == {tenant_id(1): 1, tenant_id(2): 1}
        assert cache.limiter.share == 1 and cache.limiter.queued == 2
    finally:
        aad.release.set()
    assert {(await t).status for t in hung} == {200}


async def test_a_slot_past_its_deadline_goes_to_the_next_and_overdue_calls_are_bounded():
    """limit 1: a holder past its deadline lets the next in; at most `limit` overdue at once,
    so a second overdue holder keeps its slot; each holder's own end is counted once."""
    limiter = FifoLimiter(1)
    done = [asyncio.Event() for _ in range(3)]
    inside: list[int] = []

    async def hold(i: int) -> None:
        async with limiter.slot(f"t{i}", deadline=0.01):
            inside.append(i)
            await done[i].wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(3)]
    await until(lambda: inside == [0, 1], limit=10**7)  # 0 went overdue at 10 ms: 1 is in
    assert (limiter.overdue, limiter.active, limiter.queued) == (1, 1, 1)
    done[1].set()  # 1 ends, 2 comes in and stays past its deadline: no room overdue
    await until(lambda: inside == [0, 1, 2])
    done[0].set()
    await tasks[0]
    assert (limiter.overdue, limiter.active) == (0, 1)
    done[2].set()
    await asyncio.gather(*tasks)
    assert (limiter.overdue, limiter.active, limiter.queued, limiter.peak) == (0, 0, 0, 1)


# -- the rate of cold fetches (issue 23 item 6) --------------------------------------------------


async def test_a_flood_of_distinct_tenants_is_bound_by_the_cold_fetch_rate(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """One caller asks for 300 distinct tenants Azure AD does not know, 8 at a time, on the
    fake clock: only customer_fetch_burst (20) go upstream; the rest get 429 with Retry-After
    and are counted. Each second lets customer_fetch_rate (10) more through. Tenants already
    cached are not cold: served as ever."""
    fake_sandbox.state.register_customer(tenant_id(0))
    extra = "customer_fetch_rate = 10\ncustomer_fetch_burst = 20\n"
    b = await start_broker(gdap_fake(extra=extra), clock=clock)
    assert (await token(b, tenant_id(0))).status == 200
    statuses: list[int] = []
    for start in range(1, 301, 8):
        batch = [token(b, tenant_id(i)) for i in range(start, min(start + 8, 301))]
        for r in await asyncio.gather(*batch):
            statuses.append(r.status)
            if r.status == 429:
                assert (await r.json())["error"]["code"] == "customer_fetch_rate"
                assert r.headers["Retry-After"] == "1"
    assert statuses.count(502) == 19 and statuses.count(429) == 281  # 90002: unknown tenant
    assert fake_sandbox.state.counts["aad"] == 20
    assert await metric(b, "broker_customer_fetches_refused_total", profile="gdap") == 281
    assert (await token(b, tenant_id(0))).status == 200  # a hit costs nothing
    clock.advance(1)
    answers = await asyncio.gather(*(token(b, tenant_id(i)) for i in range(400, 420)))
    assert [r.status for r in answers].count(429) == 10
    assert fake_sandbox.state.counts["aad"] == 30


def test_the_cold_fetch_rate_is_configured_per_profile(sandbox, secret):
    s = make_settings(
        sandbox,
        secret,
        profiles='[profiles.p]\ncustomer_tenants = ["*"]\ncustomer_scopes = ["s"]\n'
        "customer_fetch_rate = 2.5\ncustomer_fetch_burst = 7\n",
    )
    p = s.profiles["p"]
    assert (p.customer_fetch_rate, p.customer_fetch_burst) == (2.5, 7)
    assert make_settings(sandbox, secret).profiles["default"].customer_fetch_rate == 50
    for bad in ("customer_fetch_rate = 0", "customer_fetch_burst = 0"):
        with pytest.raises(ConfigError):
            make_settings(sandbox, secret, profiles=f"[profiles.p]\n{bad}\n")


# -- tenant records are bounded (issue 23 item 5) ------------------------------------------------


async def test_a_flood_of_unknown_tenants_keeps_records_bounded_and_busy_ones_known(
    fake_sandbox, gdap_fake, start_broker, clock
):
    """max_customer_tokens = 50; 32 tenants fetched and kept in use; then 3,000 distinct tenants
    Azure AD does not know (AADSTS90002, each remembered tenant-wide). Tenant records, and the
    refusals they remember, stay within 50; every busy tenant's record and token survive."""
    busy = [tenant_id(i) for i in range(32)]
    for t in busy:
        fake_sandbox.state.register_customer(t)
    extra = "max_customer_tokens = 50\ncustomer_fetch_burst = 100000\n"
    b = await start_broker(gdap_fake(extra=extra), clock=clock)
    cache = b.broker.tenants["gdap"]
    for t in busy:
        assert (await token(b, t)).status == 200
    most = 0
    for start in range(1000, 2000, 100):
        flood = await asyncio.gather(*(token(b, tenant_id(i)) for i in range(start, start + 100)))
        assert {r.status for r in flood} == {502}
        for t in busy:  # kept in use: cache hits
            assert (await token(b, t)).status == 200
        most = max(most, len(cache.tenants))
    assert most <= 50 and len(cache) <= 50
    assert all(t in cache.tenants and cache.lookup(t, GRAPH).token for t in busy)
    assert sum(1 for s in cache.tenants.values() if s.block is not None) <= 50 - 32


async def _msi_gdap_broker(sandbox, gdap, secret, start_broker, tmp_path, witness):
    """A broker whose [msi] serves the `gdap` profile (and the identity header it generated)."""
    text = config_text(
        sandbox, profiles="[profiles.default]\nwarm = false\n" + gdap_profile(gdap.rt_file)
    )
    text += f'\n[msi]\nprofile = "gdap"\ngenerated_header_file = "{tmp_path}/identity-header"\n'
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    return b, header


async def test_a_refused_customer_token_is_replaced_once(
    sandbox, gdap, secret, start_broker, tmp_path, witness
):
    """token_sha256_to_refresh on /msi/tenants/T/token: that tenant's token is replaced (one
    Azure AD call), the other tenant's is untouched; the same hash again calls nobody."""
    import hashlib

    for i in (1, 2):
        sandbox.state.register_customer(tenant_id(i))
    gdap()
    b, header = await _msi_gdap_broker(sandbox, gdap, secret, start_broker, tmp_path, witness)

    async def ask(tenant: str, **params) -> str:
        r = await b.client.get(
            f"/msi/tenants/{tenant}/token",
            params={"api-version": "2019-08-01", "resource": GRAPH, **params},
            headers={"X-IDENTITY-HEADER": header},
        )
        assert r.status == 200
        return (await r.json())["access_token"]

    one, two = await ask(tenant_id(1)), await ask(tenant_id(2))
    calls = sandbox.state.counts["aad"]
    digest = hashlib.sha256(one.encode()).hexdigest()
    fresh = await ask(tenant_id(1), token_sha256_to_refresh=digest)
    assert fresh != one and sandbox.state.counts["aad"] == calls + 1
    assert await ask(tenant_id(1), token_sha256_to_refresh=digest) == fresh
    assert await ask(tenant_id(2), token_sha256_to_refresh=digest) == two
    assert sandbox.state.counts["aad"] == calls + 1


async def test_tenant_spellings_do_not_multiply_replacements(
    sandbox, gdap, secret, start_broker, tmp_path, witness
):
    """token_sha256_to_refresh through /msi/tenants/T/token: one replacement per token entry
    every refresh_min_interval, whatever the case of T in the path (each spelling had a limit
    of its own: a caller refusing every new token with a new spelling of a tenant id, 2^20
    of them, turned the broker into a loop on Azure AD)."""
    import hashlib

    tenant = str(uuid.UUID(int=0xABCDEF0123))
    sandbox.state.register_customer(tenant)
    gdap()
    b, header = await _msi_gdap_broker(sandbox, gdap, secret, start_broker, tmp_path, witness)

    async def ask(spelling: str, **params):
        r = await b.client.get(
            f"/msi/tenants/{spelling}/token",
            params={"api-version": "2019-08-01", "resource": GRAPH, **params},
            headers={"X-IDENTITY-HEADER": header},
        )
        return r.status, await r.json()

    _, one = await ask(tenant)
    calls = sandbox.state.counts["aad"]
    digest = hashlib.sha256(one["access_token"].encode()).hexdigest()
    status, two = await ask(tenant, token_sha256_to_refresh=digest)
    assert status == 200 and sandbox.state.counts["aad"] == calls + 1
    digest = hashlib.sha256(two["access_token"].encode()).hexdigest()
    for spelling in (tenant.upper(), tenant[:-4] + tenant[-4:].upper(), tenant.title()):
        status, body = await ask(spelling, token_sha256_to_refresh=digest)
        assert status == 429, (spelling, body)
    assert sandbox.state.counts["aad"] == calls + 1
