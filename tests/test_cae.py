"""Client capabilities (`xms_cc`): a caller that announces cp1 gets a CAE token, asked of Azure
AD with claims={"access_token":{"xms_cc":{"values":["cp1"]}}} and cached apart; its longer
lifetime (up to 28 h) is accepted for those tokens only; a caller that announced nothing never
gets one."""

from __future__ import annotations

import json
import time

import jwt

from broker.core.resources import CP1_CLAIMS
from tests.support import msi_settings

RESOURCE = "https://api.partnercenter.microsoft.com"
GRAPH = "https://graph.microsoft.com/.default"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def _start(start_broker, sandbox, secret, tmp_path, witness, warm=True):
    profiles = f'[profiles.default]\nscopes = ["{GRAPH}"]\nwarm = {str(warm).lower()}\n'
    b = await start_broker(
        msi_settings(sandbox, secret, tmp_path, profiles=profiles, msi_extra="imds = true")
    )
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    return b, header


async def _msi(b, header, resource=RESOURCE, **params):
    r = await b.client.get(
        "/msi/token",
        params={"api-version": "2019-08-01", "resource": resource, **params},
        headers={"X-IDENTITY-HEADER": header},
    )
    return r.status, await r.json()


def _asked_claims(sandbox) -> list[str | None]:
    return [c.form.get("claims") for c in sandbox.state.calls if c.endpoint == "aad"]


async def test_cp1_gets_a_cae_token_cached_apart(start_broker, sandbox, secret, tmp_path, witness):
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    await b.broker.entry("default", "aad").get()
    _, plain = await _msi(b, header)
    status, cae = await _msi(b, header, xms_cc="cp1")
    assert status == 200 and cae["access_token"] != plain["access_token"]
    assert claims(cae["access_token"])["xms_cc"] == ["cp1"]
    assert "xms_cc" not in claims(plain["access_token"])
    assert int(cae["expires_on"]) - time.time() > 24 * 3600  # Azure AD's CAE lifetime, kept
    assert _asked_claims(sandbox) == [None, CP1_CLAIMS]
    assert json.loads(CP1_CLAIMS) == {"access_token": {"xms_cc": {"values": ["cp1"]}}}
    # Case-insensitive, comma-separated, unknown ones ignored: the same CAE entry, no call.
    for given in ("CP1", "llt,Cp1", " cp1 ,x"):
        assert (await _msi(b, header, xms_cc=given))[1]["access_token"] == cae["access_token"]
    # Nothing announced, or only capabilities Azure AD does not know: never the CAE token.
    for params in ({}, {"xms_cc": "llt"}, {"xms_cc": ""}):
        assert (await _msi(b, header, **params))[1]["access_token"] == plain["access_token"]
    v1 = await (await b.get("/v1/token?kind=aad")).json()
    assert v1["access_token"] == plain["access_token"]
    # The IMDS route shares the CAE entry; another scope has its own.
    r = await b.client.get(
        "/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": RESOURCE, "xms_cc": "cp1"},
        headers={"Metadata": "true"},
    )
    assert (await r.json())["access_token"] == cae["access_token"]
    assert len(_asked_claims(sandbox)) == 2
    _, graph = await _msi(b, header, "https://graph.microsoft.com", xms_cc="cp1")
    assert claims(graph["access_token"])["aud"] == "https://graph.microsoft.com"
    assert claims(graph["access_token"])["xms_cc"] == ["cp1"]
    assert _asked_claims(sandbox) == [None, CP1_CLAIMS, CP1_CLAIMS]


async def test_a_long_lifetime_is_accepted_for_cae_tokens_only(
    start_broker, sandbox, secret, tmp_path, witness
):
    """An Azure AD that answers 26 h to a request without cp1 is broken: that answer is an
    upstream error, never served; the same lifetime for a cp1 request is served."""
    sandbox.state.lifetimes["aad"] = 26 * 3600.0
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness, warm=False)
    for resource in (RESOURCE, "https://graph.microsoft.com"):  # the aad entry, a scope's
        status, body = await _msi(b, header, resource)
        assert status >= 500 and "access_token" not in body and "lifetime" in body["message"]
    status, body = await _msi(b, header, xms_cc="cp1")
    assert status == 200 and claims(body["access_token"])["xms_cc"] == ["cp1"]
    sandbox.state.lifetimes["aad_cae"] = 29 * 3600.0  # beyond Azure AD's 28 h: refused too
    status, body = await _msi(b, header, "https://graph.microsoft.com", xms_cc="cp1")
    assert status >= 500 and "access_token" not in body


async def test_malformed_capabilities_are_a_400(start_broker, sandbox, secret, tmp_path, witness):
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    await b.broker.entry("default", "aad").get()
    for bad in ("cp1," * 100, "cp1\x01"):
        status, body = await _msi(b, header, xms_cc=bad)
        assert status == 400 and "xms_cc" in body["message"]
    assert sandbox.state.counts["aad"] == 1


async def test_the_sandbox_refuses_claims_that_are_not_json(sandbox, secret):
    """As Azure AD does: `claims` must be a JSON object."""
    import aiohttp

    from tests.conftest import CLIENT_ID, TENANT

    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": secret,
        "scope": RESOURCE + "/.default",
        "claims": "{not json",
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{sandbox.url}/{TENANT}/oauth2/v2.0/token", data=form) as r:
            body = await r.json()
    assert r.status == 400 and body["error"] == "invalid_request"
