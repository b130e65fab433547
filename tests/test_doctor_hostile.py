"""`pc-token-broker doctor` against a hostile or broken daemon (something else on the broker's
port, or a broker relaying a hostile Azure AD's words): terminal escapes in tenant names,
messages and ids never reach the terminal, `--json` is always valid JSON, and a tenant listing
that pages forever ends."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.cli.main import main

ESC = "\x1b]0;owned\x07\x1b[2J"
PROFILE_ROW = {
    "tenant_id": "partner.onmicrosoft.com",
    "client_id": "c",
    "authority": "https://login.microsoftonline.com",
    "aad": {
        "state": "failing",
        "last_error": {
            "code": "upstream_refused",
            "message": f"refused{ESC}\nFAKE: all is well",
            "trace_id": f"t{ESC}",
            "correlation_id": f"c{ESC}",
        },
    },
    "customer_tenants": {"tenants": {"consent_required": 1}},
}
TENANT_ROW = {
    "tenant": f"evil{ESC}.example",
    "state": "consent_required",
    "last_error": {"aadsts": 65001, "message": f"m{ESC}", "trace_id": f"x{ESC}"},
}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("PC_TOKEN_BROKER_CONFIG", "PC_TOKEN_BROKER_URL", "PC_TOKEN_BROKER_SOCKET"):
        monkeypatch.delenv(name, raising=False)


class FakeDaemon:
    """Answers /v1/profiles with `profiles` (raw text) and each /v1/tenants page with
    `page(n)`; counts requests; after 1000 tenant pages it answers 500 (so a doctor that
    pages forever ends, and the test sees how far it went)."""

    def __init__(self, profiles: str | bytes, page) -> None:
        self.profiles, self.page = profiles, page
        self.calls: Counter[str] = Counter()

    async def __aenter__(self) -> str:
        async def profiles(_request: web.Request) -> web.Response:
            self.calls["profiles"] += 1
            if isinstance(self.profiles, bytes):  # as they are: not UTF-8, say
                return web.Response(body=self.profiles, content_type="application/json")
            return web.Response(text=self.profiles, content_type="application/json")

        async def tenants(_request: web.Request) -> web.Response:
            self.calls["tenants"] += 1
            if self.calls["tenants"] > 1000:
                return web.json_response({"error": {"code": "x", "message": "enough"}}, status=500)
            return web.Response(
                text=self.page(self.calls["tenants"]), content_type="application/json"
            )

        app = web.Application()
        app.router.add_get("/v1/profiles", profiles)
        app.router.add_get("/v1/tenants/{profile}", tenants)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


async def doctor(url: str, capsys, *argv: str) -> tuple[int, str, str]:
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, main, ["doctor", *argv, "--url", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def no_controls(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


async def test_escapes_in_the_daemons_answer_never_reach_the_terminal(capsys):
    body = json.dumps({"profiles": {"gdap": PROFILE_ROW}})
    page = json.dumps({"tenants": [TENANT_ROW]})
    async with FakeDaemon(body, lambda n: page) as url:
        code, out, err = await doctor(url, capsys)
        assert code == 1 and "evil" in out and "refused" in out
        assert "\x1b" not in out + err and "\x07" not in out and no_controls(out), out
        assert "\nFAKE: all is well" not in out  # a newline in a message cannot forge a line
        code, out, _ = await doctor(url, capsys, "--json")
        report = json.loads(out)  # the escapes are JSON-escaped: the output is valid JSON
        assert code == 1 and report["healthy"] is False


async def test_json_output_is_valid_json_whatever_the_ids_hold(capsys):
    """NaN where a trace id should be (Python's json reads it) must not come out as NaN, which
    no JSON parser but Python's accepts; a nested object there is not an id either."""
    error = {"code": "upstream_refused", "trace_id": float("nan"), "correlation_id": {"a": [1]}}
    row = {**PROFILE_ROW, "aad": {"state": "failing", "last_error": error}}
    body = json.dumps({"profiles": {"p": row}})  # json.dumps writes NaN
    async with FakeDaemon(body, lambda n: json.dumps({"tenants": []})) as url:
        code, out, err = await doctor(url, capsys, "--json")
    assert "NaN" not in out
    if out.strip():
        json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
        assert code == 1
    else:  # refused as not the broker's answer: one line, exit 1
        assert code == 1 and "not JSON" in err


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(lambda n: json.dumps({"tenants": [], "next": "same"}), id="empty pages"),
        pytest.param(lambda n: json.dumps({"tenants": [TENANT_ROW], "next": "same"}),
                     id="the same cursor"),
        pytest.param(lambda n: json.dumps({"tenants": [], "next": f"c{n}"}), id="new cursors"),
    ],
)  # fmt: skip
async def test_a_listing_that_pages_forever_ends(capsys, page):
    body = json.dumps({"profiles": {"gdap": PROFILE_ROW}})
    daemon = FakeDaemon(body, page)
    async with daemon as url:
        code, _, err = await doctor(url, capsys, "gdap")
    assert daemon.calls["tenants"] <= 2, daemon.calls
    assert code == 1 and "enough" not in err


@pytest.mark.parametrize(
    "life",
    [{"days_left": 1, "age_s": "x"}, {"days_left": 1, "age_s": [1]},
     {"days_left": 1, "age_s": 10**400}, {"days_left": True, "age_s": 5}, "x",
     {"days_left": 1, "age_s": 1e308, "keep_alive_days": 10**400}],
)  # fmt: skip
async def test_a_refresh_token_row_of_any_shape_is_no_traceback(capsys, life):
    """The daemon's `refresh_token` row with an age that is not a number: no finding, and
    never a traceback (it was a TypeError)."""
    body = json.dumps({"profiles": {"p": {"refresh_token": life}}})
    async with FakeDaemon(body, lambda n: json.dumps({"tenants": []})) as url:
        code, out, err = await doctor(url, capsys)
    assert err == "" and code in (0, 1)
    if life != {"days_left": 1, "age_s": 1e308, "keep_alive_days": 10**400}:
        assert (code, out.strip()) == (0, "p: healthy")


async def test_numbers_beyond_a_float_are_no_traceback(capsys):
    row = {**PROFILE_ROW, "aad": {"state": "failing", "next_attempt_in": 10**400,
           "failures_in_row": 10**400, "last_error": {"code": "upstream_failing"}}}  # fmt: skip
    page = json.dumps({"tenants": [{**TENANT_ROW, "next_attempt_in": -(10**400)}]})
    async with FakeDaemon(json.dumps({"profiles": {"p": row}}), lambda n: page) as url:
        code, out, err = await doctor(url, capsys)
    assert code == 1 and "fix:" in out and err == ""
