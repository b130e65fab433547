"""The App Service managed-identity endpoint, used by the real azure-identity package."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

from broker.cli.main import main
from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID, config_text
from tests.support import AZURE_ENV

SCOPE = "https://api.partnercenter.microsoft.com/.default"
RESOURCE = "https://api.partnercenter.microsoft.com"


def msi_settings(sandbox, secret, tmp_path, *, profiles=None, msi_extra=""):
    text = (
        config_text(sandbox, profiles=profiles)
        + f"""
[msi]
profile = "default"
generated_header_file = "{tmp_path}/identity-header"
{msi_extra}
"""
    )
    return parse_settings(text, env={"TEST_CLIENT_SECRET": secret})


@pytest.fixture
async def msi(sandbox, secret, start_broker, tmp_path, monkeypatch, witness):
    """A broker with [msi], and the two environment variables the SDKs read pointing at it."""
    b = await start_broker(msi_settings(sandbox, secret, tmp_path))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", str(b.client.make_url("/msi/token")))
    monkeypatch.setenv("IDENTITY_HEADER", header)
    await b.broker.entry("default", "aad").get()  # the warm fetch has landed
    return b, header


async def test_sync_credential_gets_the_profiles_aad_token(msi, sandbox):
    """ManagedIdentityCredential (sync) gets the aad token; 100 calls, one upstream fetch."""
    b, _ = msi
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]

    def hundred_calls() -> list:
        credential = ManagedIdentityCredential()
        return [credential.get_token(SCOPE) for _ in range(100)]

    tokens = await asyncio.get_running_loop().run_in_executor(None, hundred_calls)
    assert {t.token for t in tokens} == {expected}
    assert tokens[0].expires_on == (await (await b.get("/v1/token?kind=aad")).json())["expires_on"]
    assert sandbox.state.counts["aad"] == 1


async def test_async_credential_gets_the_token(msi, sandbox):
    """ManagedIdentityCredential from azure.identity.aio gets the same token, cached by the SDK
    under the echoed resource."""
    b, _ = msi
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    credential = AsyncManagedIdentityCredential()
    try:
        tokens = [await credential.get_token(SCOPE) for _ in range(100)]
    finally:
        await credential.close()
    assert {t.token for t in tokens} == {expected}
    assert sandbox.state.counts["aad"] == 1


async def test_default_azure_credential_works_with_the_two_variables(msi):
    """DefaultAzureCredential, with only IDENTITY_ENDPOINT and IDENTITY_HEADER set, gets it."""
    b, _ = msi
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]

    def fetch() -> str:
        return (
            DefaultAzureCredential(exclude_interactive_browser_credential=True)
            .get_token(SCOPE)
            .token
        )

    assert await asyncio.get_running_loop().run_in_executor(None, fetch) == expected


async def test_a_wrong_identity_header_is_refused(msi, monkeypatch):
    """The SDK with a wrong IDENTITY_HEADER gets no token; the broker answered 403."""
    b, _ = msi
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-identity-header")

    def fetch() -> None:
        ManagedIdentityCredential().get_token(SCOPE)

    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)):
        await asyncio.get_running_loop().run_in_executor(None, fetch)
    metrics = await (await b.client.get("/metrics")).text()
    assert 'broker_http_requests_total{route="msi",status="403"}' in metrics


async def test_protocol_details(msi):
    """expires_on is digits, resource is echoed exactly (trailing slash tolerated), errors are
    {statusCode, message}: 401 without the header, 400 for api-version, resource, identity."""
    b, header = msi
    url = "/msi/token"
    h = {"X-IDENTITY-HEADER": header}
    r = await b.client.get(
        url, params={"api-version": "2019-08-01", "resource": RESOURCE + "/"}, headers=h
    )
    body = await r.json()
    assert r.status == 200 and body["expires_on"].isdigit() and body["resource"] == RESOURCE + "/"
    assert body["token_type"] == "Bearer" and body["client_id"] == CLIENT_ID
    assert r.headers["Cache-Control"] == "no-store"
    r = await b.client.get(
        url,
        params={"api-version": "2019-08-01", "resource": RESOURCE, "client_id": CLIENT_ID},
        headers=h,
    )
    assert r.status == 200
    cases = [
        ({}, {"api-version": "2019-08-01", "resource": RESOURCE}, 401),
        (h, {"api-version": "2017-09-01", "resource": RESOURCE}, 400),
        (h, {"api-version": "2019-08-01"}, 400),
        (h, {"api-version": "2019-08-01", "resource": "https://graph.microsoft.com"}, 400),
        (h, {"api-version": "2019-08-01", "resource": RESOURCE, "client_id": "someone-else"}, 400),
        (
            h,
            {"api-version": "2019-08-01", "resource": RESOURCE, "mi_res_id": "/subscriptions/x"},
            400,
        ),
        ({**h, "Host": "evil.example"}, {"api-version": "2019-08-01", "resource": RESOURCE}, 403),
        (
            {**h, "X-Forwarded-For": "10.0.0.1"},
            {"api-version": "2019-08-01", "resource": RESOURCE},
            403,
        ),
    ]
    for headers, params, status in cases:
        r = await b.client.get(url, params=params, headers=headers)
        body = await r.json()
        assert r.status == status and body["statusCode"] == status and body["message"], params


async def test_a_resource_that_is_not_one_uri_is_a_400_never_a_500_or_an_echo(msi):
    """Whitespace alone (a 500 with a traceback once), two resources in one (accepted once,
    the first word compared and the whole echoed back), control characters, an empty
    `/.default` and an oversized value: each a 400 in the MSI error shape, on both routes,
    quoting nothing of it."""
    b, header = msi
    h = {"X-IDENTITY-HEADER": header}
    evil = "https://evil.example"
    for resource in (
        " ",
        "\t",
        f"{RESOURCE} {evil}",
        f"{RESOURCE}\t{evil}",
        f"{RESOURCE}\n",
        f"{RESOURCE}\x00",
        "/.default",
        RESOURCE + "/" + "x" * 3000,
    ):
        for url in ("/msi/token", "/msi/tenants/contoso.example/token"):
            r = await b.client.get(
                url, params={"api-version": "2019-08-01", "resource": resource}, headers=h
            )
            text = await r.text()
            assert r.status == 400, (url, resource, text)
            body = json.loads(text)
            assert body["statusCode"] == 400 and "evil" not in text and "Traceback" not in text


async def test_identities_are_selected_by_the_sdk_parameters(
    sandbox, secret, start_broker, tmp_path
):
    """client_id, object_id/principal_id and mi_res_id/resource_id pick the matching profile."""
    other = "99999999-0000-4000-8000-000000000009"
    sandbox.state.register("contoso.onmicrosoft.com", other, client_secret=secret)
    profiles = f"""[profiles.default]
[profiles.second]
client_id = "{other}"
object_id = "aaaaaaaa-0000-4000-8000-00000000000a"
resource_id = "/subscriptions/s/resourceGroups/g/providers/x/second"
"""
    b = await start_broker(msi_settings(sandbox, secret, tmp_path, profiles=profiles))
    header = (tmp_path / "identity-header").read_text().strip()
    for param, value in (
        ("client_id", other),
        ("object_id", "AAAAAAAA-0000-4000-8000-00000000000A"),
        ("principal_id", "aaaaaaaa-0000-4000-8000-00000000000a"),
        ("mi_res_id", "/subscriptions/s/resourceGroups/g/providers/x/second"),
        ("resource_id", "/subscriptions/s/resourceGroups/g/providers/x/second"),
    ):
        r = await b.client.get(
            "/msi/token",
            headers={"X-IDENTITY-HEADER": header},
            params={"api-version": "2019-08-01", "resource": RESOURCE, param: value},
        )
        assert r.status == 200, param
        assert (await r.json())["client_id"] == other


async def test_tokens_keep_420_seconds(fake_sandbox, secret, start_broker, tmp_path, clock):
    """An aad token with under 420 s left is not handed to an SDK: a fresh one is fetched,
    while /v1 (min_remaining 30) still serves the cached one."""
    b = await start_broker(msi_settings(fake_sandbox, secret, tmp_path), clock=clock)
    header = (tmp_path / "identity-header").read_text().strip()
    first = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    b.broker.entry("default", "aad").retire()  # no refresh ahead: callers decide here
    clock.advance(3599 - 400)
    assert (await (await b.get("/v1/token?kind=aad")).json())["access_token"] == first
    r = await b.client.get(
        "/msi/token",
        headers={"X-IDENTITY-HEADER": header},
        params={"api-version": "2019-08-01", "resource": RESOURCE},
    )
    body = await r.json()
    assert body["access_token"] != first
    assert int(body["expires_on"]) - clock.time() >= 420


def test_generated_header_file_is_private_and_msi_env_prints_exports(
    sandbox, secret, tmp_path, capsys, monkeypatch
):
    """msi-env prints IDENTITY_ENDPOINT (a TCP listener) and IDENTITY_HEADER for eval; with
    another profile, AZURE_CLIENT_ID too."""
    config = tmp_path / "broker.toml"
    text = config_text(sandbox, profiles="[profiles.default]\n[profiles.b]\nclient_id = 'b-id'\n")
    config.write_text(
        text.replace('listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:8799"]')
        + f'[msi]\nidentity_header_file = "{tmp_path}/hdr"\n'
    )
    (tmp_path / "hdr").write_text("configured-identity-header\n")
    monkeypatch.setenv("TEST_CLIENT_SECRET", secret)
    assert main(["msi-env", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "export IDENTITY_ENDPOINT=http://127.0.0.1:8799/msi/token",
        "export IDENTITY_HEADER=configured-identity-header",
    ]
    assert main(["msi-env", "b", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "export AZURE_CLIENT_ID=b-id"
    assert main(["msi-env", "nope", "--config", str(config)]) == 2


async def test_generated_header_is_written_0600(msi, tmp_path):
    """A generated identity header is written with mode 0600."""
    mode = stat.S_IMODE(os.stat(tmp_path / "identity-header").st_mode)
    assert mode == 0o600


async def test_a_tenant_asked_of_a_profile_without_customers_says_what_is_missing(msi):
    """ManagedIdentityCredential() ignores AZURE_CLIENT_ID (msi-env sets it): a request naming
    no identity reaches [msi] profile, without customer_tenants; the 400 says the client_id is
    missing from the request and which credential sends it, not "set AZURE_CLIENT_ID"."""
    b, header = msi
    h = {"X-IDENTITY-HEADER": header}
    url = "/msi/tenants/fabrikam.onmicrosoft.com/token"
    params = {"api-version": "2019-08-01", "resource": RESOURCE}
    r = await b.client.get(url, params=params, headers=h)
    message = (await r.json())["message"]
    assert r.status == 400 and "names no client_id" in message
    assert "DefaultAzureCredential" in message and "ManagedIdentityCredential(client_id=" in message
    r = await b.client.get(url, params={**params, "client_id": CLIENT_ID}, headers=h)
    message = (await r.json())["message"]
    assert r.status == 400 and "names (profile 'default') has no customer_tenants" in message
