"""The cache-hit path's shortcuts answer exactly as the general path: the one-packet head
budget at its boundary, and a miss (awaited) and a hit (answered at once) alike."""

from __future__ import annotations

import json

from tests.conftest import make_settings
from tests.support import (
    raw,
    request_of_head_size,
)


async def test_a_head_of_exactly_the_budget_passes_and_one_byte_more_is_431(
    sandbox, secret, run_server
):
    addresses, _ = await run_server(make_settings(sandbox, secret))
    budget = 8192  # server.max_header_bytes, the default
    ok = await raw(addresses[0], request_of_head_size(budget))
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:80]
    refused = await raw(addresses[0], request_of_head_size(budget + 1))
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:80]
    assert b"aaaa" not in refused


async def test_a_miss_and_a_hit_answer_alike(sandbox, secret, run_server):
    settings = make_settings(sandbox, secret, defaults="warm = false")
    addresses, logs = await run_server(settings)
    request = (
        b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    )
    miss = await raw(addresses[0], request)  # cold: fetched while this caller waits
    hit = await raw(addresses[0], request)
    bodies = [json.loads(a.partition(b"\r\n\r\n")[2]) for a in (miss, hit)]
    assert [a.split(b" ")[1] for a in (miss, hit)] == [b"200", b"200"]
    assert bodies[0]["access_token"] == bodies[1]["access_token"]
    assert bodies[0].keys() == bodies[1].keys()
    await run_server.stop_all()  # stopping flushes the audit writer
    audit = [json.loads(line) for line in logs.getvalue().splitlines() if "token_served" in line]
    assert [a["cache"] for a in audit][-2:] == ["miss", "hit"]


async def test_a_profile_answers_alike_on_its_own_path_and_on_the_pattern(
    sandbox, secret, start_broker
):
    """A profile configured at start has a plain path of its own (/v1/token/{name}), one a
    reload adds is found by the pattern: both answer the same way (kinds, media, a tenant's
    query), both count as route "token", and a path left by a profile the reload removed
    answers 404 as an unknown name does."""
    b = await start_broker(make_settings(sandbox, secret, profiles="[profiles.first]\n"))
    b.broker.apply(make_settings(sandbox, secret, profiles="[profiles.second]\n"))
    for name in ("first", "second"):  # first: removed by the reload; second: added by it
        for query, accept in (("", "application/json"), ("?kind=aad", "text/plain")):
            r = await b.get(f"/v1/token/{name}{query}", headers={"Accept": accept})
            if name == "first":
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "unknown_profile"
            else:
                assert r.status == 200 and r.content_type == accept
        r = await b.get(f"/v1/token/{name}?tenant=contoso.example")
        assert r.status == (404 if name == "first" else 400)  # no customer_tenants: 400
    b2 = await start_broker(make_settings(sandbox, secret, profiles="[profiles.first]\n"))
    own = await b2.get("/v1/token/first?kind=aad", headers={"Accept": "application/json"})
    body = await own.json()
    assert own.status == 200 and body["profile"] == "first" and body["kind"] == "aad"
    metrics = await (await b2.client.get("/metrics")).text()
    assert 'broker_http_requests_total{route="token",status="200"} 1.0' in metrics
