"""`token_sha256_to_refresh` on /msi/token: a caller whose token was refused (a claims
challenge) names it by its SHA-256; the broker drops that token and fetches a new one, once,
in the one single flight. Raw protocol, and MSAL Python as it speaks App Service."""

from __future__ import annotations

import asyncio
import secrets

import msal
import requests

from tests.support import msi_settings, sha256_hex

RESOURCE = "https://api.partnercenter.microsoft.com"
V = "2019-08-01"


async def _start(start_broker, sandbox, secret, tmp_path, witness, **kw):
    b = await start_broker(msi_settings(sandbox, secret, tmp_path, **kw))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    await b.broker.entry("default", "aad").get()  # the warm fetch has landed
    return b, header


async def _ask(b, header, **params):
    r = await b.client.get(
        "/msi/token",
        params={"api-version": V, "resource": RESOURCE, **params},
        headers={"X-IDENTITY-HEADER": header},
    )
    return r.status, await r.json()


async def test_the_hash_of_the_cached_token_replaces_it_once(
    start_broker, sandbox, secret, tmp_path, witness
):
    """The hash of the cached token: a new token, one Azure AD call. The same hash again (or
    the hash of a token never issued): the current token, no call."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await _ask(b, header)
    assert sandbox.state.counts["aad"] == 1
    status, second = await _ask(
        b, header, token_sha256_to_refresh=sha256_hex(first["access_token"])
    )
    assert status == 200 and second["access_token"] != first["access_token"]
    assert sandbox.state.counts["aad"] == 2
    for digest in (sha256_hex(first["access_token"]).upper(), secrets.token_hex(32)):
        status, again = await _ask(b, header, token_sha256_to_refresh=digest)
        assert status == 200 and again["access_token"] == second["access_token"]
    assert sandbox.state.counts["aad"] == 2
    assert b.logs.getvalue().count('"event": "token_refused_by_caller"') == 1  # and no token
    # /v1 callers get the new token too: the refused one is gone from the cache.
    v1 = await (await b.get("/v1/token?kind=aad")).json()
    assert v1["access_token"] == second["access_token"]


async def test_racing_callers_with_the_same_hash_cause_one_fetch(
    start_broker, sandbox, secret, tmp_path, witness
):
    """Twenty callers send the same hash while Azure AD is held: one call, one new token."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await _ask(b, header)
    digest = sha256_hex(first["access_token"])
    gate = sandbox.state.hold("aad")
    calls = [
        asyncio.create_task(_ask(b, header, token_sha256_to_refresh=digest)) for _ in range(20)
    ]
    while sandbox.state.counts["aad"] < 2:
        await asyncio.sleep(0.005)  # the one call has reached the sandbox (gate closed)
    await asyncio.sleep(0.05)  # the others have arrived too, and joined it
    gate.set()
    answers = await asyncio.gather(*calls)
    assert {s for s, _ in answers} == {200}
    assert len({a["access_token"] for _, a in answers}) == 1
    assert answers[0][1]["access_token"] != first["access_token"]
    assert sandbox.state.counts["aad"] == 2


async def test_replacing_each_new_token_at_once_is_rate_limited(
    start_broker, sandbox, secret, tmp_path, witness
):
    """Refusing the replacement within refresh_min_interval is a 429 with Retry-After, no
    Azure AD call: a caller cannot turn the broker into a loop on Azure AD."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await _ask(b, header)
    _, second = await _ask(b, header, token_sha256_to_refresh=sha256_hex(first["access_token"]))
    r = await b.client.get(
        "/msi/token",
        params={
            "api-version": V,
            "resource": RESOURCE,
            "token_sha256_to_refresh": sha256_hex(second["access_token"]),
        },
        headers={"X-IDENTITY-HEADER": header},
    )
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["statusCode"] == 429
    assert sandbox.state.counts["aad"] == 2


async def test_a_malformed_hash_is_a_400_and_changes_nothing(
    start_broker, sandbox, secret, tmp_path, witness
):
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    good = secrets.token_hex(32)
    for bad in ("", "xyz", good[:63], good + "0", "g" * 64, good[:60] + "\u00e9" * 4):
        status, body = await _ask(b, header, token_sha256_to_refresh=bad)
        assert status == 400 and "token_sha256_to_refresh" in body["message"], bad
    r = await b.client.get(
        f"/msi/token?api-version={V}&resource={RESOURCE}"
        f"&token_sha256_to_refresh={good}&token_sha256_to_refresh={good}",
        headers={"X-IDENTITY-HEADER": header},
    )
    assert r.status == 400
    assert sandbox.state.counts["aad"] == 1


async def test_a_restricted_profile_cannot_be_refreshed_through_msi(
    start_broker, sandbox, secret, tmp_path, witness
):
    """A profile an SDK caller may not use: 403, and its token is neither dropped nor
    refetched, whatever hash is sent."""
    profiles = (
        "[profiles.default]\n[profiles.locked]\nobject_id = 'lock'\naccess_key = 'k-123456789'\n"
    )
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles=profiles)
    witness.secrets.add("k-123456789")
    locked = b.broker.entry("locked", "aad")
    token, _ = await locked.get()
    calls = sandbox.state.counts["aad"]
    status, body = await _ask(
        b, header, object_id="lock", token_sha256_to_refresh=sha256_hex(token.value)
    )
    assert status == 403 and "access_token" not in body
    assert locked.token is token and sandbox.state.counts["aad"] == calls


async def test_msal_on_app_service(start_broker, sandbox, secret, tmp_path, witness, monkeypatch):
    """MSAL Python (1.39) on App Service sends no token_sha256_to_refresh (only its Service
    Fabric path does): a claims challenge alone brings back the broker's cached token. Once
    the token's hash reaches the broker (as MSAL computes it), MSAL's next call with the
    claims challenge gets the new one."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", str(b.client.make_url("/msi/token")))
    monkeypatch.setenv("IDENTITY_HEADER", header)
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    challenge = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'

    def acquire(claims: str | None = None) -> str:
        result = client.acquire_token_for_client(resource=RESOURCE, claims_challenge=claims)
        return result["access_token"]

    run = asyncio.get_running_loop().run_in_executor
    first = await run(None, acquire)
    assert await run(None, acquire, challenge) == first  # nothing told the broker
    assert sandbox.state.counts["aad"] == 1
    status, fresh = await _ask(b, header, token_sha256_to_refresh=sha256_hex(first))
    assert status == 200
    assert await run(None, acquire, challenge) == fresh["access_token"] != first
    assert sandbox.state.counts["aad"] == 2


async def test_with_a_fleet_cache_the_refused_token_is_not_read_back(
    start_broker, sandbox, secret, tmp_path, witness, redis_db, shared_key
):
    """With [shared], the replacement is fetched from Azure AD and written for the fleet: the
    refused token still stored in Redis is not handed back; a second broker of the fleet that
    gets the same hash takes the new token from Redis, with no Azure AD call."""
    from broker.config.load import parse_settings
    from tests.conftest import config_text

    text = config_text(sandbox) + (
        f'\n[shared]\nredis_url = "{redis_db.url}"\nkey_file = "{shared_key}"\n'
        f'\n[msi]\nidentity_header_file = "{tmp_path}/header"\n'
    )
    (tmp_path / "header").write_text("fleet-identity-header\n")
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret})
    one, two = await start_broker(settings), await start_broker(settings)
    header = "fleet-identity-header"
    for b in (one, two):
        await b.broker.entry("default", "aad").get()
    _, first = await _ask(one, header)
    assert (await _ask(two, header))[1]["access_token"] == first["access_token"]
    calls = sandbox.state.counts["aad"]
    digest = sha256_hex(first["access_token"])
    _, second = await _ask(one, header, token_sha256_to_refresh=digest)
    assert second["access_token"] != first["access_token"]
    assert sandbox.state.counts["aad"] == calls + 1
    _, other = await _ask(two, header, token_sha256_to_refresh=digest)
    assert other["access_token"] == second["access_token"]
    assert sandbox.state.counts["aad"] == calls + 1
