"""A profile's `scopes`: more resources of its own tenant, served from its own credential by
/msi/token, /v1/token/{profile}?scope= and `token PROFILE --scope`, each with its own cache
entry; ARM's two identifier URIs count as one allowed resource, each token asked in the
spelling asked. And `az login --identity`'s first request (ARM), as azure-cli >= 2.73 makes it
through MSAL (azure-cli itself is not installed here)."""

from __future__ import annotations

import asyncio

import jwt
import msal
import requests

from broker.cli.main import main
from tests.support import msi_settings, msi_token

ARM = "https://management.azure.com/.default"
GRAPH = "https://graph.microsoft.com/.default"
PROFILES = f'[profiles.default]\nscopes = ["{ARM}", "{GRAPH}"]\n'
V = "2019-08-01"


def aud(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["aud"]


async def _start(start_broker, sandbox, secret, tmp_path, witness, profiles=PROFILES):
    b = await start_broker(msi_settings(sandbox, secret, tmp_path, profiles=profiles))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    await b.broker.entry("default", "aad").get()
    return b, header


async def test_each_listed_resource_has_its_own_entry_and_spelling(
    start_broker, sandbox, secret, tmp_path, witness
):
    """ARM in both its URIs (each asked of Azure AD as spelled, echoed exactly), Graph; each
    cached: asking again calls nobody. A resource not listed: 400 naming those served."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    asked = {
        "https://management.core.windows.net/": "https://management.core.windows.net/",
        "https://management.azure.com": "https://management.azure.com",
        "https://graph.microsoft.com": "https://graph.microsoft.com",
    }
    tokens = {}
    for resource, audience in asked.items():
        status, body = await msi_token(b, header, resource)
        assert status == 200 and body["resource"] == resource
        assert aud(body["access_token"]) == audience
        tokens[resource] = body["access_token"]
    assert len(set(tokens.values())) == 3
    calls = sandbox.state.counts["aad"]
    assert calls == 4  # the warm PC token and the three
    for resource in asked:
        assert (await msi_token(b, header, resource))[1]["access_token"] == tokens[resource]
    assert sandbox.state.counts["aad"] == calls
    status, body = await msi_token(b, header, "https://vault.azure.net")
    assert status == 400 and "vault.azure.net" in body["message"]
    assert "graph.microsoft.com" in body["message"] and "scopes" in body["message"]
    assert sandbox.state.counts["aad"] == calls


async def test_v1_scope_and_the_cli_share_the_msi_entry(
    start_broker, sandbox, secret, tmp_path, witness, capsys
):
    """/v1/token/default?scope=Graph is the same entry as /msi/token?resource=Graph; the CLI's
    --scope prints it; a scope not listed is 400 scope_not_allowed, with no call."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, msi = await msi_token(b, header, "https://graph.microsoft.com")
    r = await b.get("/v1/token/default", params={"scope": GRAPH})
    body = await r.json()
    assert r.status == 200 and body["access_token"] == msi["access_token"]
    assert body["kind"] == "aad" and body["profile"] == "default"
    calls = sandbox.state.counts["aad"]
    r = await b.get("/v1/token/default", params={"scope": "https://vault.azure.net/.default"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "scope_not_allowed"
    r = await b.get("/v1/token/default", params={"scope": GRAPH, "kind": "partner"})
    assert r.status == 400
    url = b.client.base
    argv = ["token", "default", "--scope", GRAPH, "--url", url]
    assert await asyncio.get_running_loop().run_in_executor(None, main, argv) == 0
    assert capsys.readouterr().out.strip() == msi["access_token"]
    assert sandbox.state.counts["aad"] == calls


async def test_az_login_identity_request_through_msal(
    start_broker, sandbox, secret, tmp_path, witness, monkeypatch
):
    """azure-cli >= 2.73 runs `az login --identity` through MSAL's ManagedIdentityClient,
    asking ARM as `https://management.core.windows.net/`: served from the profile's scopes.
    Without ARM in scopes the answer is the 400 naming what to list."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", str(b.client.make_url("/msi/token")))
    monkeypatch.setenv("IDENTITY_HEADER", header)

    def az_login() -> dict:
        client = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
        )
        return client.acquire_token_for_client(resource="https://management.core.windows.net/")

    result = await asyncio.get_running_loop().run_in_executor(None, az_login)
    assert aud(result["access_token"]) == "https://management.core.windows.net/"


async def test_scopes_never_reach_a_restricted_profile(
    start_broker, sandbox, secret, tmp_path, witness
):
    """A restricted profile's scopes: /msi cannot select it (400), /v1 without its key 403,
    with it 200."""
    profiles = (
        "[profiles.default]\n"
        f'[profiles.locked]\nobject_id = "lock"\naccess_key = "k-123456789"\nscopes = ["{GRAPH}"]\n'
    )
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles)
    witness.secrets.add("k-123456789")
    calls = sandbox.state.counts["aad"]
    status, body = await msi_token(b, header, "https://graph.microsoft.com", object_id="lock")
    assert status == 400 and "access_token" not in body
    r = await b.get("/v1/token/locked", params={"scope": GRAPH})
    assert r.status == 403
    assert sandbox.state.counts["aad"] == calls
    r = await b.get(
        "/v1/token/locked", params={"scope": GRAPH}, headers={"X-Broker-Key": "k-123456789"}
    )
    assert r.status == 200


async def test_protocol_edges(start_broker, sandbox, secret, tmp_path, witness):
    """api-version other than 2019-08-01: 400 naming it; IMDS's selector spellings and any
    unknown parameter: 400 naming what this route knows, never the default identity."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    resource = "https://api.partnercenter.microsoft.com"
    for version in ("2018-02-01", "2017-09-01", "", "2019-08-01x"):
        status, body = await msi_token(b, header, resource, **{"api-version": version})
        assert status == 400 and "2019-08-01" in body["message"], version
    for param, pointer in (("clientid", "client_id"), ("msi_res_id", "mi_res_id")):
        status, body = await msi_token(b, header, resource, **{param: "x"})
        assert status == 400 and param in body["message"] and pointer in body["message"]
    status, body = await msi_token(b, header, resource, bypass_cache="true")
    assert status == 400 and "bypass_cache" in body["message"]
    assert "access_token" not in body


async def test_no_customer_tenants_says_what_to_set(
    start_broker, sandbox, secret, tmp_path, witness
):
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    r = await b.client.get(
        "/msi/tenants/contoso.example/token",
        params={"api-version": V, "resource": "https://graph.microsoft.com"},
        headers={"X-IDENTITY-HEADER": header},
    )
    message = (await r.json())["message"]
    assert r.status == 400 and "customer_tenants" in message and "AZURE_CLIENT_ID" in message


async def test_spellings_make_a_bounded_number_of_entries(
    start_broker, sandbox, secret, tmp_path, witness
):
    """A caller sending hundreds of spellings of the listed resources (case, trailing slashes,
    `/.default`, ARM's two URIs, with and without cp1, on /msi/token and /v1): the entries
    stay within two spellings per resource (four for ARM) times plain/CAE, and so do the
    Azure AD calls; no metric grows a label per spelling."""
    import random

    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    rand = random.Random(7)
    bases = (
        "https://management.azure.com",
        "https://management.core.windows.net",
        "https://graph.microsoft.com",
        "https://api.partnercenter.microsoft.com",
    )
    before = await (await b.client.get("/metrics")).text()
    for i in range(300):
        base = rand.choice(bases)
        cased = "".join(c.upper() if rand.random() < 0.5 else c for c in base)
        spelling = cased + "/" * rand.randrange(4) + rand.choice(("", "/.default"))
        params = {"xms_cc": "cp1"} if i % 2 else {}
        status, body = await msi_token(b, header, spelling, **params)
        assert status == 200 and body["resource"] == spelling, spelling
        r = await b.get("/v1/token/default", params={"scope": spelling})
        assert r.status == 200, spelling
    # ARM 4 + Graph 2 (plain), ARM 4 + Graph 2 + Partner Center 2 (CAE); PC plain: its own entry
    scoped = b.broker.runtime.profiles["default"].scoped
    assert len(scoped) <= 14, sorted(scoped)
    assert sandbox.state.counts["aad"] <= 1 + 14
    metrics = await (await b.client.get("/metrics")).text()
    assert "graph" not in metrics.lower() and "management" not in metrics.lower()
    assert len(metrics.splitlines()) <= len(before.splitlines()) + 20


async def test_a_scope_removed_by_a_reload_is_no_longer_served(
    start_broker, sandbox, secret, tmp_path, witness
):
    """After a reload drops Graph from `scopes`: 400 on /msi/token and /v1, no Azure AD call,
    and the old Graph entry is retired (no timer left to refresh it)."""
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness)
    status, _ = await msi_token(b, header, "https://graph.microsoft.com")
    assert status == 200
    old = b.broker.runtime.profiles["default"]
    graph = old.own_entry("https://graph.microsoft.com/.default", False)
    assert graph.token is not None and graph.next_at is not None
    b.broker.apply(
        msi_settings(
            sandbox, secret, tmp_path, profiles=f'[profiles.default]\nscopes = ["{ARM}"]\n'
        )
    )
    status, body = await msi_token(b, header, "https://graph.microsoft.com")
    assert status == 400 and "scopes" in body["message"]
    r = await b.get("/v1/token/default", params={"scope": GRAPH})
    assert r.status == 400
    assert graph.next_at is None  # retired: its timer is gone
    asked = [c.form.get("scope", "") for c in sandbox.state.calls if c.endpoint == "aad"]
    assert sum("graph" in s for s in asked) == 1  # the one before the reload
    assert (await msi_token(b, header, "https://management.azure.com"))[0] == 200


async def test_a_resource_spelled_with_unicode_look_alikes_is_a_400(
    start_broker, sandbox, secret, tmp_path, witness
):
    """Resource URIs are ASCII. The Kelvin sign (U+212A) lower-cases to an ASCII `k`, so a
    resource spelled with it compared equal to a listed one: it was answered (a token asked
    of Azure AD as the ASCII spelling) and echoed back in the look-alike spelling. Now a 400
    on both routes and /v1, with no Azure AD call; a Cyrillic look-alike (U+0430) never matched."""
    kusto = "https://help.kusto.windows.net"
    profiles = f'[profiles.default]\nscopes = ["{kusto}"]\n'
    b, header = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles)
    calls = sandbox.state.counts["aad"]
    for look_alike in (kusto.replace("k", "\u212a"), kusto.replace("w", "\u0461")):
        status, body = await msi_token(b, header, look_alike)
        assert status == 400 and "access_token" not in body, look_alike
        r = await b.get("/v1/token/default", params={"scope": look_alike})
        assert r.status == 400
    assert sandbox.state.counts["aad"] == calls
    status, body = await msi_token(b, header, kusto)
    assert status == 200 and body["resource"] == kusto
