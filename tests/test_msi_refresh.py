"""`token_sha256_to_refresh` on /msi/token: a caller whose token was refused (a claims
challenge) names it by its SHA-256; the broker drops that token and fetches a new one, once,
in the one single flight. Raw protocol, and MSAL Python as it speaks App Service."""

from __future__ import annotations

import asyncio
import os
import secrets

import msal
import requests

from tests.support import msi_settings, msi_token, sha256_hex

RESOURCE = "https://api.partnercenter.microsoft.com"
V = "2019-08-01"


async def _start(start_broker, sandbox, secret, tmp_path, witness, **kw):
    b = await start_broker(msi_settings(sandbox, secret, tmp_path, **kw))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    await b.broker.entry("default", "aad").get()  # the warm fetch has landed
    return b, header


async def test_the_hash_of_the_cached_token_replaces_it_once(
    start_broker, sandbox, secret, tmp_path, witness
):
    """The hash of the cached token: a new token, one Azure AD call. The same hash again (or
    the hash of a token never issued): the current token, no call."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await msi_token(b, header, RESOURCE)
    assert sandbox.state.counts["aad"] == 1
    status, second = await msi_token(
        b, header, RESOURCE, token_sha256_to_refresh=sha256_hex(first["access_token"])
    )
    assert status == 200 and second["access_token"] != first["access_token"]
    assert sandbox.state.counts["aad"] == 2
    for digest in (sha256_hex(first["access_token"]).upper(), secrets.token_hex(32)):
        status, again = await msi_token(b, header, RESOURCE, token_sha256_to_refresh=digest)
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
    _, first = await msi_token(b, header, RESOURCE)
    digest = sha256_hex(first["access_token"])
    gate = sandbox.state.hold("aad")
    calls = [
        asyncio.create_task(msi_token(b, header, RESOURCE, token_sha256_to_refresh=digest))
        for _ in range(20)
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
    _, first = await msi_token(b, header, RESOURCE)
    _, second = await msi_token(
        b, header, RESOURCE, token_sha256_to_refresh=sha256_hex(first["access_token"])
    )
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
        status, body = await msi_token(b, header, RESOURCE, token_sha256_to_refresh=bad)
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
    """A profile an SDK caller may not use: not selected (400, as an unknown identity), and
    its token is neither dropped nor refetched, whatever hash is sent."""
    profiles = (
        "[profiles.default]\n[profiles.locked]\nobject_id = 'lock'\naccess_key = 'k-123456789'\n"
    )
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles=profiles)
    witness.secrets.add("k-123456789")
    locked = b.broker.entry("locked", "aad")
    token, _ = await locked.get()
    calls = sandbox.state.counts["aad"]
    status, body = await msi_token(
        b, header, RESOURCE, object_id="lock", token_sha256_to_refresh=sha256_hex(token.value)
    )
    assert status == 400 and "access_token" not in body and "locked" not in body["message"]
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
    status, fresh = await msi_token(b, header, RESOURCE, token_sha256_to_refresh=sha256_hex(first))
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
    _, first = await msi_token(one, header, RESOURCE)
    assert (await msi_token(two, header, RESOURCE))[1]["access_token"] == first["access_token"]
    calls = sandbox.state.counts["aad"]
    digest = sha256_hex(first["access_token"])
    _, second = await msi_token(one, header, RESOURCE, token_sha256_to_refresh=digest)
    assert second["access_token"] != first["access_token"]
    assert sandbox.state.counts["aad"] == calls + 1
    _, other = await msi_token(two, header, RESOURCE, token_sha256_to_refresh=digest)
    assert other["access_token"] == second["access_token"]
    assert sandbox.state.counts["aad"] == calls + 1


async def test_another_spelling_of_the_resource_does_not_reset_the_rate_limit(
    start_broker, sandbox, secret, tmp_path, witness
):
    """The limit is the entry's, however it is reached: the same token asked as `R` and as
    `R/` (one entry) cannot be replaced twice within refresh_min_interval by alternating the
    spelling (each spelling once had a limit of its own: two Azure AD calls per interval,
    and any number through the customer route's tenant spellings)."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await msi_token(b, header, RESOURCE)
    _, second = await msi_token(
        b, header, RESOURCE, token_sha256_to_refresh=sha256_hex(first["access_token"])
    )
    assert sandbox.state.counts["aad"] == 2
    for resource in (RESOURCE + "/", RESOURCE.upper(), RESOURCE + "//"):
        status, body = await msi_token(
            b,
            header,
            resource,
            token_sha256_to_refresh=sha256_hex(second["access_token"]),
        )
        assert status == 429, (resource, body)
    assert sandbox.state.counts["aad"] == 2


async def test_a_refresh_in_flight_does_not_bring_the_refused_token_back_from_the_fleet(
    start_broker, sandbox, secret, tmp_path, witness, own_redis, shared_key
):
    """A caller refuses the token while a forced refresh is in flight (reading the fleet's
    cache): it joins that flight, which finds the refused token still stored in Redis. The
    refused token must not come back: the flight fetches past it, and the caller gets a new
    one. Redis is paused (SIGSTOP) so the flight is surely in its read when the hash lands."""
    import signal

    from broker.config.load import parse_settings
    from tests.conftest import HEADERS, config_text
    from tests.support import until

    text = config_text(sandbox) + (
        f'\n[shared]\nredis_url = "{own_redis.url}"\nkey_file = "{shared_key}"\n'
        f'\n[msi]\nidentity_header_file = "{tmp_path}/header"\n'
    )
    (tmp_path / "header").write_text("fleet-identity-header\n")
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    header = "fleet-identity-header"
    entry = b.broker.entry("default", "aad")
    await entry.get()
    _, first = await msi_token(b, header, RESOURCE)
    digest = sha256_hex(first["access_token"])
    pid = own_redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        forced = asyncio.create_task(b.client.post("/v1/token/default/refresh", headers=HEADERS))
        await until(lambda: entry.flight is not None, "the forced refresh is in flight")
        refusing = asyncio.create_task(
            msi_token(b, header, RESOURCE, token_sha256_to_refresh=digest)
        )
        await until(lambda: entry.token is None, "the refused token is dropped")
    finally:
        os.kill(pid, signal.SIGCONT)
    status, fresh = await refusing
    assert (await forced).status == 200
    assert status == 200 and fresh["access_token"] != first["access_token"]
    assert entry.token is not None and sha256_hex(entry.token.value) != digest
    _, again = await msi_token(b, header, RESOURCE)
    assert again["access_token"] == fresh["access_token"]
