"""The Azure clients for JavaScript, unchanged, against the broker: azure-identity 4.14.1 and
msal-node 7.2.1 for Node.js (tests/js, installed by `make test` with `npm ci`), on the App
Service route and the IMDS route. msal-node is the client that sends `xms_cc` (client
capabilities) on both."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import jwt
import pytest

from broker.core.resources import CP1_CLAIMS
from tests.support import AZURE_ENV, ROOT, msi_settings

SCRIPT = ROOT / "tests/js/clients.mjs"
RESOURCE = "https://api.partnercenter.microsoft.com"


async def node(case: str, env: dict[str, str]) -> dict:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in AZURE_ENV and not k.startswith(("IDENTITY_", "AZURE_POD", "MSI_", "IMDS_"))
    }
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), case,
        env={**base, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (case, out.decode()[-500:], err.decode()[-1000:])
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture
async def broker(start_broker, sandbox, secret, tmp_path, witness):
    b = await start_broker(msi_settings(sandbox, secret, tmp_path, msi_extra="imds = true"))
    header = (tmp_path / "identity-header").read_text().strip()
    witness.secrets.add(header)
    await b.broker.entry("default", "aad").get()
    routes = {
        "app-service": {
            "IDENTITY_ENDPOINT": str(b.client.make_url("/msi/token")),
            "IDENTITY_HEADER": header,
        },
        "imds": {"AZURE_POD_IDENTITY_AUTHORITY_HOST": b.client.base},
    }
    return b, routes


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize("route", ["app-service", "imds"])
async def test_azure_identity_js(broker, sandbox, route):
    b, routes = broker
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    assert (await node("azure-identity", routes[route]))["tokens"] == [expected]
    assert (await node("msal-node", routes[route]))["tokens"] == [expected]
    assert sandbox.state.counts["aad"] == 1


@pytest.mark.parametrize("route", ["app-service", "imds"])
async def test_msal_node_sends_client_capabilities(broker, sandbox, route):
    """msal-node with clientCapabilities ["cp1"] sends xms_cc=cp1: a CAE token, asked of Azure
    AD with the cp1 claims and cached apart from the plain one. After a claims challenge it
    asks again without token_sha256_to_refresh (7.2 sends that to Service Fabric only) and
    gets the same token; once the hash reaches the broker, its next call gets a new one."""
    b, routes = broker
    plain = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    got = await node("msal-node-cae", routes[route])
    assert got["first"] != plain and _claims(got["first"])["xms_cc"] == ["cp1"]
    assert got["cached"] == got["challenged"] == got["first"]
    asked = [c.form.get("claims") for c in sandbox.state.calls if c.endpoint == "aad"]
    assert asked == [None, CP1_CLAIMS]
    digest = hashlib.sha256(got["first"].encode()).hexdigest()
    query = {"resource": RESOURCE, "xms_cc": "cp1", "token_sha256_to_refresh": digest}
    if route == "imds":
        r = await b.client.get(
            "/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", **query},
            headers={"Metadata": "true"},
        )
    else:
        r = await b.client.get(
            "/msi/token",
            params={"api-version": "2019-08-01", **query},
            headers={"X-IDENTITY-HEADER": routes[route]["IDENTITY_HEADER"]},
        )
    fresh = (await r.json())["access_token"]
    assert fresh != got["first"]
    assert (await node("msal-node-cae", routes[route]))["first"] == fresh
    assert [c.form.get("claims") for c in sandbox.state.calls if c.endpoint == "aad"] == [
        None,
        CP1_CLAIMS,
        CP1_CLAIMS,
    ]
    # The plain token was never dropped: callers without capabilities still get it.
    assert (await (await b.get("/v1/token?kind=aad")).json())["access_token"] == plain
