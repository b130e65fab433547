"""Access is checked against the configuration in force when the token is handed over (README
"Local security"), on every route that hands one out.

The attack: a caller asks for a token that must be fetched; the fetch is held at the sandbox's
Azure AD; while the caller waits, a reload restricts the profile to another uid, gives it an
access key the caller does not have, or removes it; then the fetch lands. The caller gets
403 (or 404), never the token: neither in the body nor in an audit line.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from broker.config.load import parse_settings
from tests.conftest import HEADERS, config_text, make_settings

CUSTOMER = "7a1c0e4e-3c8b-4b4e-9c55-0d8d5c3f2a10"
GRAPH = "https://graph.microsoft.com/.default"
MSI_HEADER = "m" * 32
MSI = {"X-IDENTITY-HEADER": MSI_HEADER}
API = "api-version=2019-08-01"

# route -> (path, headers): every route that hands out a token fetched by Azure AD.
ROUTES = {
    "v1 aad": ("/v1/token/p?kind=aad", HEADERS),
    "v1 tenant": (f"/v1/token/p?tenant={CUSTOMER}", HEADERS),
    "msi": (f"/msi/token?{API}&resource=https://api.partnercenter.microsoft.com", MSI),
    "msi tenant": (f"/msi/tenants/{CUSTOMER}/token?{API}&resource={GRAPH[:-9]}", MSI),
}
PROFILE = f"""warm = false
customer_tenants = ["*"]
customer_scopes = ["{GRAPH}"]
"""
# The reload: what the profile becomes while the caller waits.
CHANGES = {
    "another uid": f"[profiles.p]\n{PROFILE}allowed_uids = [{os.getuid() + 4242}]\n",
    "an access key": f'[profiles.p]\n{PROFILE}access_key_env = "BROKER_KEY"\n',
    "removed": "",
}
# The answer the waiting caller gets: /v1 says 404 for a profile that is gone, the managed-
# identity protocol answers 403 for an identity it no longer serves.
EXPECTED = {
    ("v1", "removed"): 404,
    ("msi", "removed"): 403,
}


def settings(sandbox, secret: str, profile: str):
    """Profile `p` (as given) and `other`; /msi serves `p` while it exists, else `other`."""
    msi_profile = "p" if profile else "other"
    text = config_text(sandbox, profiles=f"{profile}[profiles.other]\nwarm = false\n") + (
        f'[msi]\nprofile = "{msi_profile}"\nidentity_header_env = "MSI_HEADER"\n'
    )
    env = {"TEST_CLIENT_SECRET": secret, "MSI_HEADER": MSI_HEADER, "BROKER_KEY": "k" * 24}
    return parse_settings(text, env=env)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("route", ROUTES)
async def test_a_reload_while_the_caller_waits_decides_what_it_gets(
    sandbox, secret, start_broker, route, change
):
    sandbox.state.register_customer(CUSTOMER)
    gate = sandbox.state.hold("aad")
    b = await start_broker(settings(sandbox, secret, f"[profiles.p]\n{PROFILE}"))
    path, headers = ROUTES[route]
    caller = asyncio.ensure_future(b.client.get(path, headers=headers))
    await sandbox.state.wait_calls("aad", 1)  # the caller waits on the held fetch
    b.broker.apply(settings(sandbox, secret, CHANGES[change]))
    gate.set()
    response = await asyncio.wait_for(caller, 10)
    body = await response.text()
    family = route.split()[0]
    assert response.status == EXPECTED.get((family, change), 403), body
    assert "access_token" not in body
    assert sandbox.state.counts["aad"] == 1 and sandbox.state.issued >= 1  # a token was issued
    await b.client.close()  # the audit lines are written out
    assert '"token_served"' not in b.logs.getvalue()


@pytest.mark.parametrize("route", ROUTES)
async def test_a_reload_that_leaves_the_profile_alone_serves_the_waiting_caller(
    sandbox, secret, start_broker, route
):
    """The control: the same wait across a reload that changes another profile hands the
    caller its token."""
    sandbox.state.register_customer(CUSTOMER)
    gate = sandbox.state.hold("aad")
    b = await start_broker(settings(sandbox, secret, f"[profiles.p]\n{PROFILE}"))
    path, headers = ROUTES[route]
    caller = asyncio.ensure_future(b.client.get(path, headers=headers))
    await sandbox.state.wait_calls("aad", 1)
    calm = settings(sandbox, secret, f"[profiles.p]\n{PROFILE}").profiles
    new = settings(sandbox, secret, f"[profiles.p]\n{PROFILE}[profiles.third]\n")
    assert new.profiles["p"] == calm["p"]
    b.broker.apply(new)
    gate.set()
    response = await asyncio.wait_for(caller, 10)
    assert response.status == 200, await response.text()
    assert (await response.json())["access_token"]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_caller_whose_profile_a_reload_rebuilt_gets_the_new_configurations_token(
    sandbox, secret, start_broker, route
):
    """The reload changes the profile but still allows the caller: the token of the
    configuration that went is not handed out; the caller waits for the new one's."""
    sandbox.state.register_customer(CUSTOMER)
    gate = sandbox.state.hold("aad")
    b = await start_broker(settings(sandbox, secret, f"[profiles.p]\n{PROFILE}"))
    path, headers = ROUTES[route]
    caller = asyncio.ensure_future(b.client.get(path, headers=headers))
    await sandbox.state.wait_calls("aad", 1)
    changed = settings(sandbox, secret, f"[profiles.p]\n{PROFILE}min_remaining = 45\n")
    assert b.broker.apply(changed)["changed"] == ["p"]
    gate.set()
    response = await asyncio.wait_for(caller, 10)
    assert response.status == 200, await response.text()
    served = (await response.json())["access_token"]
    assert sandbox.state.counts["aad"] == 2  # the old configuration's fetch, then the new one's
    assert len(sandbox.state.issued_values or ()) == 2
    new = b.broker.tenants["p"].lookup(CUSTOMER, GRAPH) if "tenant" in route else None
    entry = new if new is not None else b.broker.entry("p", "aad")
    assert served == entry.token.value


async def test_waiters_of_a_profile_a_reload_restricts_get_no_token(sandbox, secret, start_broker):
    """Callers already waiting on a cold profile when a reload restricts it to another uid get
    403 when the token arrives, not the token."""
    sandbox.state.latency["aad"] = 0.3
    cold = "[profiles.default]\nwarm = false\n"
    b = await start_broker(make_settings(sandbox, secret, profiles=cold))
    waiting = [asyncio.ensure_future(b.get("/v1/token")) for _ in range(3)]
    entry = b.broker.entry("default", "partner")
    while entry.waiters < 3:
        await asyncio.sleep(0)  # until the three callers wait on the flight
    restricted = cold + f"allowed_uids = [{os.getuid() + 4242}]\n"
    b.broker.apply(make_settings(sandbox, secret, profiles=restricted))
    statuses = [(await r).status for r in waiting]
    assert statuses == [403, 403, 403]
