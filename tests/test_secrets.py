"""No token or secret in logs, error bodies, metrics or status: checked by grepping for the
real values the test used."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
from aiohttp import web

from broker.config.load import parse_settings
from broker.observe.logs import make_logger
from broker.observe.redact import REDACTED, Redactor
from tests.conftest import HEADERS, config_text, make_settings
from tests.support import JWT


def test_redactor_catches_shapes_keys_and_known_values() -> None:
    """JWTs, bearer headers, form fields, sensitive keys and registered values are all scrubbed."""
    r = Redactor(["registered-opaque-secret"])
    assert r.text(f"token was {JWT} ok") == f"token was {REDACTED} ok"
    assert r.text("Authorization: Bearer abc.def-123") == f"Authorization: Bearer {REDACTED}"
    assert r.text("client_secret=hunter2hunter2&scope=x") == f"client_secret={REDACTED}&scope=x"
    assert r.text('{"refresh_token": "0.AAA-opaque"}') == '{"refresh_token": "' + REDACTED + '"}'
    assert r.text("in the middle registered-opaque-secret here") == (
        f"in the middle {REDACTED} here"
    )
    event = r.value(
        {"client_secret": "plain", "nested": {"Authorization": "x", "ok": "fine"}, "list": [JWT]}
    )
    assert event == {
        "client_secret": REDACTED,
        "nested": {"Authorization": REDACTED, "ok": "fine"},
        "list": [REDACTED],
    }
    r.add("short")  # too short to redact safely: ordinary words would vanish
    assert r.text("short words stay") == "short words stay"


def test_exception_text_in_logs_is_redacted() -> None:
    """A traceback whose message holds a secret is rendered, then scrubbed."""
    stream = io.StringIO()
    log = make_logger(stream=stream, redactor=Redactor(["exception-secret-value"]))
    try:
        raise RuntimeError(f"failed with exception-secret-value and {JWT}")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    assert "RuntimeError" in out
    assert "exception-secret-value" not in out and JWT not in out


async def test_no_secret_or_token_anywhere_after_success_and_failures(
    sandbox, secret, start_broker
):
    """Through refreshes, refusals and upstream errors, the client secret and every token
    issued stay out of logs, error bodies, /v1/profiles and /metrics."""
    wrong_secret = "wrong-secret-value-" + secret[-8:]
    settings = parse_settings(
        config_text(
            sandbox,
            profiles="[profiles.default]\n[profiles.wrong]\n"
            "client_secret_env = 'WRONG'\nwarm = false\n",
        ),
        env={"TEST_CLIENT_SECRET": secret, "WRONG": wrong_secret},
    )
    b = await start_broker(settings)
    outputs: list[str] = []
    tokens: set[str] = set()
    for kind in ("partner", "aad"):
        body = await (await b.get(f"/v1/token/default?kind={kind}")).json()
        tokens.add(body["access_token"])
    refused = await b.get("/v1/token/wrong")
    assert refused.status == 502
    error = (await refused.json())["error"]
    assert error["upstream_status"] == 401 and "AADSTS7000215" in error["message"]
    outputs.append(await refused.text())
    sandbox.state.fail("partner", 500)
    forced = await b.client.post("/v1/token/default/refresh", headers={"Metadata": "true"})
    assert forced.status == 503
    outputs.append(await forced.text())
    outputs.append(await (await b.get("/v1/profiles")).text())
    outputs.append(await (await b.client.get("/metrics")).text())
    outputs.append(await (await b.client.get("/readyz")).text())
    logs = b.logs.getvalue()
    assert "token_refreshed" in logs and "refresh_failed" in logs
    outputs.append(logs)
    everything = "\n".join(outputs)
    for value in (secret, wrong_secret, *tokens):
        assert value not in everything
    assert "eyJ" not in everything
    for line in logs.splitlines():
        json.loads(line)  # every log line is one JSON object


async def test_the_client_secret_stays_redacted_after_600_opaque_tokens(
    hostile, secret, run_server
):
    """600 opaque mirror tokens go through the redactor; then Azure AD answers with an error
    that echoes the client secret: the /v1 error body, /v1/profiles and the log redact it."""
    issued = 0

    async def partner(request: web.Request) -> web.Response:
        nonlocal issued
        issued += 1
        return web.json_response({"access_token": f"opaque-{issued:05d}-tok", "expires_in": 3600})

    async def aad(request: web.Request) -> web.Response:
        description = f"AADSTS7000215: Invalid client secret provided: {secret} is not valid"
        return web.json_response(
            {"error": "invalid_client", "error_description": description}, status=401
        )

    hostile.partner, hostile.aad = partner, aad
    settings = make_settings(hostile, secret, profiles="[profiles.default]\nwarm = false\n")
    (address,), logs = await run_server(settings)
    gate = asyncio.Semaphore(16)

    async def mirror(s: aiohttp.ClientSession, i: int) -> None:
        async with gate:
            async with s.post(
                f"http://{address}/generatetoken",
                data="grant_type=jwt_token",
                headers={
                    "Authorization": f"Bearer caller-bearer-{i}",
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
            ) as r:
                assert r.status == 200

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(mirror(s, i) for i in range(600)))
        assert issued == 600
        async with s.get(f"http://{address}/v1/token", headers=HEADERS) as r:
            error = await r.text()
            assert r.status == 502
        async with s.get(f"http://{address}/v1/profiles", headers=HEADERS) as r:
            profiles = await r.text()
    assert "[redacted]" in error and "[redacted]" in profiles
    for text in (error, profiles, logs.getvalue()):
        assert secret not in text
