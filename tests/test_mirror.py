"""The drop-in /generatetoken mirror against the sandbox: the upstream contract, cached, and
only while the caller's bearer is valid; the bodies it refuses (a DTD in any encoding, deep
nesting) and Microsoft's generated SDK as a caller."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from aiohttp import web

from broker.sandbox.state import PARTNER_AUDIENCE
from tests.conftest import FakeClock, make_settings
from tests.hostile import raw_json

JSON_BODY = ("application/json", b'{"grant_type": "jwt_token"}')
BODIES = [
    JSON_BODY,
    ("text/json", b'{"grant_type":"jwt_token"}'),
    ("application/xml", b"<TokenRequest><grant_type>jwt_token</grant_type></TokenRequest>"),
    (
        "text/xml; charset=utf-8",
        b'<?xml version="1.0"?><r xmlns="http://schemas.datacontract.org/2004/07/X">'
        b"<grant_type>jwt_token</grant_type></r>",
    ),
    ("application/x-www-form-urlencoded", b"grant_type=jwt_token"),
]


def bearer(sandbox, lifetime: float = 3600) -> str:
    return sandbox.state.mint({"aud": PARTNER_AUDIENCE, "tid": "t", "appid": "a"}, lifetime)


async def post(
    b,
    token: str | None,
    *,
    media: str = "application/json",
    body: bytes = JSON_BODY[1],
    path: str = "/v3/generatetoken",
    accept: str = "application/json",
    **headers: str,
):
    h = {"Content-Type": media, "Accept": accept, **headers}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return await b.client.post(path, data=body, headers=h)


async def test_five_body_media_types_one_upstream_call(sandbox, secret, start_broker):
    """One bearer, five requests in the five body media types: the same token, one call."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    token = bearer(sandbox)
    tokens = []
    for media, body in BODIES:
        r = await post(b, token, media=media, body=body)
        assert r.status == 200, (media, await r.text())
        data = await r.json()
        assert data["token_type"] == "bearer" and data["expires_in"].isdigit()
        tokens.append(data["access_token"])
    assert len(set(tokens)) == 1
    assert sandbox.state.counts["partner"] == 1


async def test_xml_accept_gets_xml_and_a_second_bearer_its_own_call(sandbox, secret, start_broker):
    """Accept: application/xml → XML; a second bearer → its own upstream call and token."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    first, second = bearer(sandbox), bearer(sandbox)
    r = await post(b, first, accept="application/xml")
    assert r.status == 200 and r.content_type == "application/xml"
    root = ET.fromstring(await r.read())
    assert root.findtext("access_token") and root.findtext("token_type") == "bearer"
    json_answer = await (await post(b, first)).json()
    assert json_answer["access_token"] == root.findtext("access_token")
    other = await (await post(b, second)).json()
    assert other["access_token"] != json_answer["access_token"]
    assert sandbox.state.counts["partner"] == 2


async def test_correlation_ids_reach_upstream_and_come_back(sandbox, secret, start_broker):
    """ms-correlationid and ms-requestid are forwarded and returned; made when absent."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    r = await post(b, bearer(sandbox), **{"ms-correlationid": "corr-123", "ms-requestid": "req-9"})
    assert r.status == 200
    assert r.headers["ms-correlationid"] == "corr-123" and r.headers["ms-requestid"] == "req-9"
    call = sandbox.state.calls[-1]
    assert (
        call.headers["ms-correlationid"] == "corr-123" and call.headers["ms-requestid"] == "req-9"
    )
    made = await post(b, bearer(sandbox))
    assert len(made.headers["ms-correlationid"]) == 36
    assert sandbox.state.calls[-1].headers["ms-correlationid"] == made.headers["ms-correlationid"]


@pytest.mark.parametrize(
    ("name", "kwargs", "status"),
    [
        ("no bearer", {"token": None}, 401),
        ("basic auth", {"token": None, "Authorization": "Basic dXNlcjpwdw=="}, 401),
        (
            "grant_type=password",
            {"media": "application/x-www-form-urlencoded", "body": b"grant_type=password"},
            400,
        ),
        ("malformed JSON", {"body": b'{"grant_type": '}, 400),
        ("JSON array", {"body": b'["jwt_token"]'}, 400),
        ("no grant_type", {"body": b"{}"}, 400),
        ("malformed XML", {"media": "text/xml", "body": b"<a><grant_type>jwt_token</a>"}, 400),
        (
            "XML entity",
            {
                "media": "application/xml",
                "body": b'<!DOCTYPE a [<!ENTITY x "y">]><a><grant_type>&x;</grant_type></a>',
            },
            400,
        ),
        ("empty body", {"body": b""}, 400),
        (
            "oversized body",
            {"body": b'{"grant_type": "jwt_token", "pad": "' + b"x" * 70000 + b'"}'},
            413,
        ),
        ("unsupported media type", {"media": "text/plain", "body": b"grant_type=jwt_token"}, 415),
        ("unacceptable Accept", {"accept": "image/png"}, 406),
    ],
)
async def test_bad_requests_are_refused_without_an_upstream_call(
    sandbox, secret, start_broker, name, kwargs, status
):
    """What the broker can judge itself is answered like upstream would, with no upstream call."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    kwargs = dict(kwargs)
    token = kwargs.pop("token", bearer(sandbox))
    r = await post(b, token, **kwargs)
    assert r.status == status, (name, await r.text())
    body = await r.json()
    assert body["code"] == status and body["source"] == "PartnerFD" and body["description"]
    assert sandbox.state.counts["partner"] == 0


async def test_concurrent_identical_requests_share_one_call(sandbox, secret, start_broker):
    """50 concurrent requests with one bearer: one upstream call, one token."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    sandbox.state.latency["partner"] = 0.2
    token = bearer(sandbox)
    responses = await asyncio.gather(*(post(b, token) for _ in range(50)))
    assert {r.status for r in responses} == {200}
    assert len({(await r.json())["access_token"] for r in responses}) == 1
    assert sandbox.state.counts["partner"] == 1


async def test_legacy_and_v3_paths_are_cached_apart(sandbox, secret, start_broker):
    """/generatetoken and /v3/generatetoken each forward to their own upstream path."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    token = bearer(sandbox)
    assert (await post(b, token, path="/generatetoken")).status == 200
    assert (await post(b, token, path="/v3/generatetoken")).status == 200
    assert [c.path for c in sandbox.state.calls] == ["/generatetoken", "/v3/generatetoken"]


async def test_upstream_errors_are_relayed_as_sent(sandbox, secret, start_broker):
    """Upstream's 403 (and its body and media type) reaches the caller unchanged; an invalid
    bearer gets upstream's own 401."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    sandbox.state.fail("partner", 403)
    r = await post(b, bearer(sandbox), accept="text/xml")
    assert r.status == 403 and r.content_type == "text/xml"
    assert ET.fromstring(await r.read()).findtext("code") == "403"
    r = await post(b, "not-a-valid-token")
    assert r.status == 401 and "invalid or expired" in (await r.json())["description"]
    assert sandbox.state.counts["partner"] == 2


async def test_unreachable_upstream_is_502_in_callers_media(sandbox, secret, start_broker):
    """A connection failure is a 502 in the caller's media type."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    sandbox.state.fail("partner", mode="reset")
    r = await post(b, bearer(sandbox), accept="application/xml")
    assert r.status == 502 and r.content_type == "application/xml"
    assert ET.fromstring(await r.read()).findtext("code") == "502"


async def test_mirror_timeout_is_504(sandbox, secret, start_broker):
    """A hanging upstream: 504 after [mirror] upstream_timeout, in JSON for a JSON caller."""
    from broker.config.load import parse_settings
    from tests.conftest import config_text

    text = config_text(sandbox, profiles="") + "upstream_timeout = 0.3\n"
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    sandbox.state.fail("partner", mode="hang", delay=30)
    r = await post(b, bearer(sandbox))
    assert r.status == 504 and (await r.json())["code"] == 504


async def test_refresh_ahead_only_while_the_bearer_is_valid(
    fake_sandbox, secret, start_broker, clock: FakeClock
):
    """Past the refresh point, a hit with a valid bearer refreshes in the background; with a
    bearer about to expire, no refresh is made and the cached token is still served."""
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=""), clock=clock)
    long_lived = bearer(fake_sandbox, lifetime=7200)
    short_lived = bearer(fake_sandbox, lifetime=2750)
    first = (await (await post(b, long_lived)).json())["access_token"]
    first_short = (await (await post(b, short_lived)).json())["access_token"]
    clock.advance(2700)  # past the refresh point (25 % of 3600 s before expiry)
    assert (await (await post(b, long_lived)).json())["access_token"] == first  # served, and...
    answer = await (await post(b, short_lived)).json()
    assert answer["access_token"] == first_short and int(answer["expires_in"]) in (899, 900)
    await asyncio.gather(*b.broker.runtime.mirror.in_flight())
    assert fake_sandbox.state.counts["partner"] == 3  # ...one refresh: the valid bearer's
    fresh = (await (await post(b, long_lived)).json())["access_token"]
    assert fresh != first
    assert (await (await post(b, short_lived)).json())["access_token"] == first_short
    assert fake_sandbox.state.counts["partner"] == 3


async def test_distinct_bearers_are_bounded_by_max_entries(sandbox, secret, start_broker):
    """500 distinct bearers with max_entries = 50: the cache holds 50, newest kept."""
    from broker.config.load import parse_settings
    from tests.conftest import config_text

    text = config_text(sandbox, profiles="") + "max_entries = 50\n"
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    bearers = [bearer(sandbox) for _ in range(500)]
    for token in bearers:
        assert (await post(b, token)).status == 200
    assert len(b.broker.runtime.mirror) == 50
    assert (await post(b, bearers[-1])).status == 200
    assert sandbox.state.counts["partner"] == 500  # the newest was a hit


async def test_bearers_and_tokens_never_logged_and_counted_in_metrics(
    sandbox, secret, start_broker
):
    """Hits and misses are counted; no bearer or token reaches the logs or /metrics."""
    b = await start_broker(make_settings(sandbox, secret, profiles=""))
    token = bearer(sandbox)
    answer = await (await post(b, token, **{"ms-correlationid": "log-me"})).json()
    await post(b, token)
    await post(b, None)
    metrics = await (await b.client.get("/metrics")).text()
    assert 'broker_mirror_requests_total{result="miss"} 1.0' in metrics
    assert 'broker_mirror_requests_total{result="hit"} 1.0' in metrics
    assert 'broker_mirror_requests_total{result="rejected"} 1.0' in metrics
    logs = b.logs.getvalue()
    assert '"mirror_exchange"' in logs and "log-me" in logs
    for text in (logs, metrics):
        assert token not in text and answer["access_token"] not in text


async def test_deeply_nested_json_is_a_400_not_a_500(hostile, secret, run_server):
    """1,100 `[` in a 2 KB mirror body: 400 in Partner Center's shape; the same nesting in an
    upstream answer: 502 upstream_bad_token. No traceback in the log."""

    async def partner(request: web.Request) -> web.Response:
        return raw_json("[" * 1100 + "]" * 1100)

    hostile.partner = partner
    (address,), logs = await run_server(make_settings(hostile, secret))
    async with aiohttp.ClientSession() as s:
        for body, status in (("[" * 1100 + "]" * 1100, 400), ('{"grant_type": "jwt_token"}', 502)):
            async with s.post(
                f"http://{address}/generatetoken",
                data=body,
                headers={"Authorization": "Bearer caller", "Content-Type": "application/json"},
            ) as r:
                answer = await r.json()
                assert r.status == status
                assert answer["code"] == status and answer["source"] == "PartnerFD"
    assert "Traceback" not in logs.getvalue()
    assert "handler_crashed" not in logs.getvalue()


async def test_a_dtd_hidden_in_utf16_is_refused(sandbox, secret, run_server):
    """A UTF-16LE XML body without BOM hides `<!DOCTYPE` from a byte search; its internal
    entity would expand to the grant. The mirror refuses it with 400, without an upstream call."""
    (address,), _ = await run_server(make_settings(sandbox, secret, profiles=""))
    bearer = sandbox.state.mint({"aud": PARTNER_AUDIENCE, "tid": "t", "appid": "a"}, 3600)
    document = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY g "jwt_token">]>'
        "<r><grant_type>&g;</grant_type></r>"
    )
    for body in (document.encode("utf-16-le"), document.replace("UTF-16", "UTF-8").encode()):
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://{address}/v3/generatetoken",
                data=body,
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/xml"},
            ) as r:
                assert r.status == 400
                assert "DOCTYPE" in (await r.json())["description"]
    assert sandbox.state.counts["partner"] == 0


async def test_an_expired_bearer_is_not_served_from_the_mirror_cache(
    fake_sandbox, secret, start_broker, clock
):
    """A bearer whose exp passed more than 5 minutes ago gets Partner Center's 401, not the
    token cached for it while it was valid (which still has most of its life)."""
    fake_sandbox.state.lifetimes["partner"] = 3600
    bearer = fake_sandbox.state.mint({"aud": PARTNER_AUDIENCE, "tid": "t", "appid": "a"}, 600)
    b = await start_broker(make_settings(fake_sandbox, secret, profiles=""), clock=clock)

    async def mirror():
        return await b.client.post(
            "/v3/generatetoken",
            data='{"grant_type": "jwt_token"}',
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        )

    assert (await mirror()).status == 200
    clock.advance(600 + 290)  # expired, but within Azure AD's 5 minutes of skew
    assert (await mirror()).status == 200
    assert fake_sandbox.state.counts["partner"] == 1
    clock.advance(20)
    r = await mirror()
    assert r.status == 401
    assert fake_sandbox.state.counts["partner"] == 2


async def test_partnercenterservices_sdk_gets_a_token_from_the_mirror(sandbox, secret, run_server):
    """Microsoft's generated Python SDK sends the grant as a bare JSON string, "jwt_token",
    with Content-Type application/json. Pointed at the mirror (and at the sandbox itself) its
    postgeneratetoken gets a token: the same one on the second call, from the cache."""
    from microsoft.store.partnercenterservices import MicrosoftPartnerStoreApis
    from msrest.authentication import BasicTokenAuthentication

    (address,), _ = await run_server(make_settings(sandbox, secret, profiles=""))
    bearer = sandbox.state.mint({"aud": PARTNER_AUDIENCE, "tid": "t", "appid": "a"}, 3600)

    def generate(base_url: str) -> tuple[int, dict]:
        client = MicrosoftPartnerStoreApis(
            BasicTokenAuthentication({"access_token": bearer}), base_url=base_url
        )
        client.config.retry_policy.retries = 0
        response = client.postgeneratetoken("jwt_token", raw=True).response
        return response.status_code, response.json()

    answers = [await asyncio.to_thread(generate, f"http://{address}") for _ in range(2)]
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1]["access_token"] == answers[1][1]["access_token"]
    assert int(answers[0][1]["expires_in"]) > 3000
    status, direct = await asyncio.to_thread(generate, sandbox.url)
    assert status == 200 and direct["access_token"]
    assert sandbox.state.counts["partner"] == 2  # one through the mirror, one direct
