"""[shared] keeps every profile's tokens and refresh tokens its own (guarantee 11): shared keys
name the profile and its credential (the refresh token's lineage, the secret, the certificate),
so brokers share only what they would have fetched themselves. Real Redis, the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CLIENT_ID
from tests.test_shared import settings_with

CUSTOMER = "fabrikam.example"
GRAPH = "https://graph.microsoft.com/.default"


def two_users(restricted: Path, open_: Path, key_file: Path) -> str:
    """Two refresh_token profiles of the same app, same tenant: one behind an access key."""
    return f"""[profiles.restricted]
credential = "refresh_token"
refresh_token_file = "{restricted}"
access_key_file = "{key_file}"
warm = false
customer_tenants = ["*"]
customer_scopes = ["{GRAPH}"]
[profiles.open]
credential = "refresh_token"
refresh_token_file = "{open_}"
warm = false
customer_tenants = ["*"]
customer_scopes = ["{GRAPH}"]
"""


async def test_no_token_or_refresh_token_crosses_to_another_profile(
    sandbox, secret, start_broker, redis_db, shared_key, tmp_path
) -> None:
    """The restricted profile fetches its own Azure AD token and a customer's; the open
    profile (another user's refresh token, one Azure AD refuses) asks for the same: it gets
    its own refusal, never the other's token; for a tenant nobody fetched it never redeems the
    other's rotated refresh token, and its file keeps its own."""
    sandbox.state.register_customer(CUSTOMER)
    sandbox.state.register_customer("contoso-two.example")
    app = sandbox.state.apps[CLIENT_ID]
    restricted, open_ = tmp_path / "restricted-rt", tmp_path / "open-rt"
    restricted.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    open_.write_text("a-refresh-token-azure-ad-never-issued\n")
    (tmp_path / "key").write_text("access-key-" + secret[-12:])
    key = {"X-Broker-Key": "access-key-" + secret[-12:]}
    profiles = two_users(restricted, open_, tmp_path / "key")
    settings = settings_with(sandbox, secret, redis_db.url, shared_key, profiles=profiles)
    b = await start_broker(settings)

    mine = await b.get("/v1/token/restricted?kind=aad", headers=key)
    assert mine.status == 200, await mine.text()
    theirs = await b.get("/v1/token/restricted", params={"tenant": CUSTOMER}, headers=key)
    assert theirs.status == 200, await theirs.text()
    own_token = (await mine.json())["access_token"]
    customer_token = (await theirs.json())["access_token"]
    calls = sandbox.state.counts["aad"]

    r = await b.get("/v1/token/open?kind=aad")
    assert r.status == 502, await r.text()
    assert own_token not in await r.text()
    r = await b.get("/v1/token/open", params={"tenant": CUSTOMER})
    assert r.status == 502 and customer_token not in await r.text()
    r = await b.get("/v1/token/open", params={"tenant": "contoso-two.example"})
    assert r.status == 502
    assert sandbox.state.counts["aad"] == calls + 3  # each asked Azure AD, and was refused
    assert open_.read_text() == "a-refresh-token-azure-ad-never-issued\n"
    rotated = restricted.read_text().strip()
    assert rotated not in open_.read_text()


async def test_brokers_of_the_same_profile_and_refresh_token_still_share(
    sandbox, secret, start_broker, redis_db, shared_key, tmp_path
) -> None:
    """Two hosts given the same refresh token for the same profile: one Azure AD call for the
    profile's token and one for a customer's, fleet-wide; after the rotation, and after a
    restart, they still name the same lineage (recorded beside the file)."""
    sandbox.state.register_customer(CUSTOMER)
    app = sandbox.state.apps[CLIENT_ID]
    first = sandbox.state.issue_refresh_token(app)
    files = [tmp_path / "a-rt", tmp_path / "b-rt"]
    brokers = []
    for path in files:
        path.write_text(first + "\n")
        profile = (
            f'[profiles.gdap]\ncredential = "refresh_token"\nrefresh_token_file = "{path}"\n'
            f'warm = false\ncustomer_tenants = ["*"]\ncustomer_scopes = ["{GRAPH}"]\n'
        )
        settings = settings_with(sandbox, secret, redis_db.url, shared_key, profiles=profile)
        brokers.append((settings, await start_broker(settings)))
    (sa, a), (_, b) = brokers
    for path in ("/v1/token/gdap?kind=aad", f"/v1/token/gdap?tenant={CUSTOMER}"):
        for x in (a, b):
            r = await x.get(path)
            assert r.status == 200, await r.text()
    assert sandbox.state.counts["aad"] == 2
    lineage = json.loads(Path(f"{files[0]}.lineage").read_text())
    assert first not in json.dumps(lineage)
    assert files[0].read_text().strip() != first  # rotated, and the lineage goes on
    assert lineage["lineage"] == json.loads(Path(f"{files[1]}.lineage").read_text())["lineage"]
    assert oct(Path(f"{files[0]}.lineage").stat().st_mode & 0o777) == "0o600"
    restarted = await start_broker(sa)  # its file holds a rotated token: the same lineage
    r = await restarted.get("/v1/token/gdap?kind=aad")
    assert r.status == 200 and sandbox.state.counts["aad"] == 2
