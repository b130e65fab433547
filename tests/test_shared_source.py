"""A token another broker of the fleet fetched is shown as such: /v1/profiles gives its
`source` ("shared", not "upstream"), the calls count it under `shared` (not `ok`), `status`
shows `shared=1`, and the log says `token_from_shared_cache`, not `token_refreshed`."""

from __future__ import annotations

import json

from broker.cli.summary import status_table
from tests.test_shared import fleet, settings_with


async def test_status_and_profiles_say_when_a_token_came_from_the_shared_cache(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    settings = settings_with(sandbox, secret, redis_db.url, shared_key)
    (first,) = await fleet(start_broker, settings, 1)
    assert (await first.get("/v1/token")).status == 200
    mine = (await (await first.get("/v1/profiles")).json())["profiles"]["default"]
    assert mine["partner"]["source"] == "upstream"
    assert mine["partner"]["upstream_calls"] == {"ok": 1}
    before = dict(sandbox.state.counts)
    (second,) = await fleet(start_broker, settings, 1)
    assert (await second.get("/v1/token")).status == 200
    assert sandbox.state.counts == before  # from Redis: no upstream call
    profiles = (await (await second.get("/v1/profiles")).json())["profiles"]
    theirs = profiles["default"]["partner"]
    assert theirs["source"] == "shared" and theirs["upstream_calls"] == {"shared": 1}
    assert "shared=1" in status_table(profiles)
    events = [json.loads(line)["event"] for line in second.logs.getvalue().splitlines()]
    assert "token_from_shared_cache" in events and "token_refreshed" not in events
