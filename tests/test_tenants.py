"""Customer tenants (GDAP, Secure Application Model): tokens per (tenant, scope) from one
refresh token, against the sandbox's customer tenants."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import jwt
import pytest

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from broker.core.tenants import FifoLimiter, aadsts_codes
from tests.conftest import CLIENT_ID, HEADERS, config_text, make_settings

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


@pytest.fixture
def gdap(sandbox, secret, tmp_path):
    """A refresh token for the sandbox app, in a file; returns a settings maker."""
    app = sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    rt_file.chmod(0o600)

    def settings(**kwargs):
        return make_settings(
            sandbox,
            secret,
            profiles="[profiles.default]\nwarm = false\n" + gdap_profile(rt_file, **kwargs),
        )

    settings.rt_file = rt_file  # type: ignore[attr-defined]
    settings.app = app  # type: ignore[attr-defined]
    return settings


async def token(b, tenant: str, scope: str | None = None, **params):
    query = {"tenant": tenant, **({"scope": scope} if scope else {}), **params}
    return await b.get("/v1/token/gdap", params=query)


# -- the done-when tests ---------------------------------------------------------------------


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


@pytest.fixture
def gdap_fake(fake_sandbox, secret, tmp_path):
    app = fake_sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(fake_sandbox.state.issue_refresh_token(app) + "\n")

    def settings(**kwargs):
        return make_settings(
            fake_sandbox,
            secret,
            profiles="[profiles.default]\nwarm = false\n" + gdap_profile(rt_file, **kwargs),
        )

    return settings


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
