"""Upstream error details: the AADSTS code as its own field, Azure AD's trace and correlation
ids, and a bounded description never cut mid-GUID; in the /v1 error JSON, the logs,
/v1/profiles and the CLI's error line. Hostile error bodies never become a 500, nor freeze the
daemon while it reads them."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid

import aiohttp
import pytest
from aiohttp import web

from broker.config.load import parse_settings
from broker.core.upstream.details import DESCRIPTION_MAX, bounded, parse_details
from tests.conftest import HEADERS, config_text, make_settings
from tests.support import request_json

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def test_an_azure_ad_refusal_keeps_what_support_asks_for(sandbox, run_server):
    """A wrong client secret: the sandbox answers as Azure AD does (AADSTS7000215, Trace ID,
    Correlation ID in the description and as fields)."""
    settings = parse_settings(config_text(sandbox), env={"TEST_CLIENT_SECRET": "not-the-secret"})
    (address,), logs = await run_server(settings)
    status, body = await request_json(address, "/v1/token")
    assert status == 502, body
    error = body["error"]
    assert error["aadsts"] == 7000215 and error["upstream_status"] == 401
    assert GUID.fullmatch(error["trace_id"]) and GUID.fullmatch(error["correlation_id"])
    sent = [c.headers["client-request-id"] for c in sandbox.state.calls]
    assert error["correlation_id"] in sent  # Azure AD's id is the one we sent it
    assert "Invalid client secret provided." in error["message"]
    assert "Trace ID" not in error["message"] and "Timestamp" not in error["message"]
    failed = [
        json.loads(line) for line in logs.getvalue().splitlines() if '"refresh_failed"' in line
    ]
    assert failed and failed[0]["aadsts"] == 7000215
    assert failed[0]["trace_id"] == error["trace_id"]
    _, profiles = await request_json(address, "/v1/profiles")
    last = profiles["profiles"]["default"]["aad"]["last_error"]
    assert (last["aadsts"], last["trace_id"]) == (7000215, error["trace_id"])
    assert last["correlation_id"] == error["correlation_id"]
    async with aiohttp.ClientSession() as s:  # counted apart: waiting will not fix it
        async with s.get(f"http://{address}/metrics") as r:
            metrics = await r.text()
    assert 'broker_credential_refused_total{credential="client_secret",profile="default"}' in (
        metrics
    )

    # The CLI's one error line, through its real entry point in a process of its own.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "token", "--url", f"http://{address}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    line = err.decode()
    assert proc.returncode == 1 and out == b""
    assert "AADSTS7000215" in line and f"correlation id {error['correlation_id']}" in line
    assert len(line.strip().splitlines()) == 1


LONG = (
    "AADSTS50000: There was an error issuing a token or an issue with our sign-in service. "
    + "The request named application 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 and "
    + "tenant 11111111-2222-4333-8444-555555555555, " * 6
    + "Trace ID: 4e3b2a19-1111-4222-8333-944455556666 "
    + "Correlation ID: 7d6c5b4a-1111-4222-8333-944455556666 Timestamp: 2026-05-01 12:00:00Z"
)


@pytest.mark.parametrize(
    ("name", "status", "body", "content_type"),
    [
        ("long description", 400, json.dumps({"error": "invalid_request",
                                              "error_description": LONG}), "application/json"),
        ("not UTF-8", 400, b"\xff\xfe{\"error\": \"x\"}", "application/json"),
        ("NaN codes", 400, b'{"error": "x", "error_codes": [NaN], "error_description": 5}',
         "application/json"),
        ("deeply nested", 400, b"[" * 100_000 + b"]" * 100_000, "application/json"),
        ("bool code, dict description", 401, json.dumps({"error_codes": [True],
         "error_description": {"a": 1}, "trace_id": "not-a-guid"}), "application/json"),
        ("control characters", 400, json.dumps({"error": "x\r\nInjected: 1",
         "error_description": "AADSTS700016: line one\nline\x1b[31m two\x00"}),
         "application/json"),
        ("html", 500, b"<html>" + b"x" * 200_000 + b"</html>", "text/html"),
        ("a million-character description", 400,
         json.dumps({"error_description": "AADSTS9002313 " + "y" * 1_000_000}),
         "application/json"),
    ],
)  # fmt: skip
async def test_hostile_error_bodies_give_a_clean_bounded_error(
    sandbox, secret, run_server, aiohttp_server, name, status, body, content_type
):
    async def token(_request: web.Request) -> web.Response:
        payload = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=payload, content_type=content_type)

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    fake = await aiohttp_server(app)
    text = config_text(sandbox).replace(
        f'authority = "{sandbox.url}"', f'authority = "http://127.0.0.1:{fake.port}"'
    )
    (address,), _ = await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    got, answer = await request_json(address, "/v1/token")
    assert got in (502, 503), (name, answer)
    error = answer["error"]
    assert len(error["message"]) <= DESCRIPTION_MAX + 40, name
    assert "\n" not in error["message"] and "\x1b" not in error["message"], name
    assert set(error) <= {"code", "message", "upstream_status", "correlation_id", "aadsts",
                          "trace_id"}  # fmt: skip
    if name == "long description":
        assert error["aadsts"] == 50000
        assert error["trace_id"] == "4e3b2a19-1111-4222-8333-944455556666"
        assert error["correlation_id"] == "7d6c5b4a-1111-4222-8333-944455556666"
        assert error["message"].endswith("…")
        # Every GUID-ish run in the message is a whole GUID: nothing was cut in the middle.
        for run in re.findall(r"[0-9a-f-]{9,}", error["message"]):
            assert GUID.fullmatch(run), run
    if name == "control characters":
        assert error["aadsts"] == 700016 and "line one line" in error["message"]
    if name == "a million-character description":
        assert error["aadsts"] == 9002313


def test_bounded_cuts_at_a_word_and_marks_the_cut():
    guid = str(uuid.uuid4())
    text = ("word " * 55) + guid + " tail"
    cut = bounded(text, 300)
    assert len(cut) <= 300 and cut.endswith("…") and guid not in cut and guid[:8] not in cut
    assert bounded("short", 300) == "short"
    one_word = "x" * 1000
    assert len(bounded(one_word, 300)) == 300


def test_partner_center_error_details_come_from_its_body_and_headers():
    corr = str(uuid.uuid4())
    d = parse_details(
        json.dumps({"code": 900, "description": "The token is not valid", "source": "PC"}).encode(),
        {"MS-CorrelationId": corr},
        lambda t: t,
    )
    assert d.description == "900 The token is not valid"
    assert d.aadsts is None and d.correlation_id == corr
    assert parse_details(b"", {"x-ms-request-id": "nope"}, str).trace_id is None


def test_the_description_is_redacted():
    d = parse_details(b'{"error_description": "secret-value-123 leaked"}', {}, lambda t: t.replace(
        "secret-value-123", "[redacted]"))  # fmt: skip
    assert d.description == "[redacted] leaked"


async def test_a_huge_adversarial_error_does_not_freeze_the_daemon(hostile, secret, run_server):
    """Azure AD answers 400 with a 160 KB `error` of `eyJeyJeyJ...` (quadratic for the old JWT
    pattern: seconds of event loop): /healthz keeps answering while the broker handles it,
    and the caller gets a short 502."""

    async def aad(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "eyJ" * 54000, "error_description": "eyJ" * 54000}, status=400
        )

    hostile.aad = aad
    settings = make_settings(hostile, secret, profiles="[profiles.default]\nwarm = false\n")
    (address,), _ = await run_server(settings)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        token = asyncio.ensure_future(s.get(f"http://{address}/v1/token", headers=HEADERS))
        slowest = 0.0
        while not token.done():
            started = loop.time()
            async with s.get(f"http://{address}/healthz") as r:
                assert r.status == 200
            slowest = max(slowest, loop.time() - started)
        response = await token
        body = await response.json()
    assert response.status == 502 and len(body["error"]["message"]) <= 400
    assert hostile.calls["aad"] == 1
    assert slowest < 1.0, f"/healthz waited {slowest:.2f} s"
