"""`pc-token-broker consent` while the daemon runs: a refresh token placed in the file (a new
sign-in, say one with MFA after 900421) must not be overwritten by a rotated token the daemon
still holds from before (a burst's coalesced write-back, or the one written at shutdown). The
placed file wins, as it does when the daemon next reads it."""

from __future__ import annotations

import pytest

from broker.config.files import place_secret
from tests.test_tenants import gdap_fake, tenant_id, token  # noqa: F401 - gdap_fake: a fixture


@pytest.mark.parametrize("then", ["the burst's write-back", "shutdown"])
async def test_a_token_placed_meanwhile_is_not_overwritten(
    fake_sandbox,
    gdap_fake,  # noqa: F811
    start_broker,
    clock,
    then,
):
    for i in range(4):
        fake_sandbox.state.register_customer(tenant_id(i))
    b = await start_broker(gdap_fake(), clock=clock)
    credential = b.broker.credentials["gdap"]
    for i in range(3):  # the first rotation is written at once, the later ones held back
        assert (await token(b, tenant_id(i))).status == 200
    assert credential.refresh_token._unsaved is not None  # a rotation held back
    placed = fake_sandbox.state.issue_refresh_token(gdap_fake.app)  # consent's new sign-in
    place_secret(str(gdap_fake.rt_file), placed + "\n")
    if then == "shutdown":
        await b.broker.close()
    else:
        clock.advance(1.0)  # the burst is over: the held-back rotation's write-back is due
        await credential.settled()
    assert gdap_fake.rt_file.read_text() == placed + "\n"
    if then != "shutdown":  # and the daemon goes on with the placed token
        assert (await token(b, tenant_id(3))).status == 200
        assert fake_sandbox.state.calls[-1].form.get("grant_type") == "refresh_token"
        assert placed not in b.logs.getvalue()
