"""The sandbox's device-code endpoints as a real client sees them: MSAL Python's own device
flow (msal.oauth2cli's Client.initiate_device_flow / obtain_token_by_device_flow, the code
under PublicClientApplication's, which insists on an https authority) against the sandbox.
Each answer Azure AD documents for the flow: the /devicecode fields, authorization_pending,
slow_down, the tokens, bad_verification_code, authorization_declined, expired_token.

msal comes with azure-identity (the test group's), which is built on it: no dependency of its
own."""

from __future__ import annotations

import asyncio
import functools

import pytest
from msal.oauth2cli.oauth2 import Client

from tests.conftest import CLIENT_ID, TENANT

SCOPE = ["https://api.partnercenter.microsoft.com/.default", "offline_access", "openid"]


@pytest.fixture
def msal_client(sandbox) -> Client:
    base = f"{sandbox.url}/{TENANT}/oauth2/v2.0"
    return Client(
        {"token_endpoint": f"{base}/token", "device_authorization_endpoint": f"{base}/devicecode"},
        client_id=CLIENT_ID,
    )


async def blocking(fn, *args, **kwargs):
    """MSAL is synchronous (requests): run it off the loop that serves the sandbox."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def poll_once(client: Client, flow: dict) -> dict:
    """One poll, as if `interval` had passed since the last (MSAL warns of a poll too soon)."""
    flow["latest_attempt_at"] = 0
    return await blocking(client.obtain_token_by_device_flow, flow, exit_condition=lambda f: True)


async def test_msal_reads_the_device_code_answer(sandbox, msal_client):
    flow = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    assert {"device_code", "user_code", "verification_uri", "expires_in", "interval",
            "message"} <= flow.keys()  # fmt: skip
    assert flow["expires_in"] == 900 and flow["interval"] == 5
    assert flow["user_code"] in flow["message"] and flow["verification_uri"] in flow["message"]
    assert flow["verification_uri"].startswith("https://")


async def test_msal_polls_through_every_answer(sandbox, msal_client):
    device = sandbox.state.device
    device.interval = 1
    flow = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    result = await poll_once(msal_client, flow)
    assert result["error"] == "authorization_pending" and result["error_codes"] == [70016]
    assert "trace_id" in result and "correlation_id" in result
    device.slow_down(flow["user_code"])
    result = await poll_once(msal_client, flow)
    assert result["error"] == "slow_down" and flow["interval"] == 6  # MSAL added 5 s
    device.approve(flow["user_code"], mfa=True)
    result = await poll_once(msal_client, flow)
    assert result.get("token_type") == "Bearer", result
    assert result["refresh_token"] in sandbox.state.apps[CLIENT_ID].refresh_tokens
    assert {"access_token", "id_token", "expires_in", "scope"} <= result.keys()
    result = await poll_once(msal_client, flow)  # a device code is redeemed once
    assert result["error"] == "bad_verification_code"

    flow = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    device.decline(flow["user_code"])
    result = await poll_once(msal_client, flow)
    assert result["error"] == "authorization_declined"

    flow = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    device.latest.expires_at = sandbox.state.now()
    result = await poll_once(msal_client, flow)
    assert result["error"] == "expired_token" and result["error_codes"] == [70019]


async def test_msal_blocking_loop_ends_with_the_tokens(sandbox, msal_client):
    """MSAL's own loop (not one poll at a time): approved before it starts, its first poll
    gets the tokens, so no waiting."""
    flow = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    sandbox.state.device.approve(flow["user_code"], mfa=False)
    result = await blocking(msal_client.obtain_token_by_device_flow, flow)
    assert "refresh_token" in result and "error" not in result


async def test_the_sandbox_forgets_expired_codes(sandbox, msal_client):
    """Codes long expired are dropped when a new one is asked for: a sandbox asked for codes
    again and again does not grow without bound (a polled one still answers expired_token
    for another 15 minutes)."""
    device = sandbox.state.device
    flows = [await blocking(msal_client.initiate_device_flow, scope=SCOPE) for _ in range(3)]
    for f in device.flows.values():
        f.expires_at = sandbox.state.now() - 900  # expired 15 minutes ago
    fresh = await blocking(msal_client.initiate_device_flow, scope=SCOPE)
    assert list(device.flows) == [fresh["device_code"]]
    result = await poll_once(msal_client, flows[0])
    assert result["error"] == "bad_verification_code"
