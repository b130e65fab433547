"""A rotated refresh token that cannot be used (a lone UTF-16 surrogate, empty, a control
character, over 16 KiB) is refused like a bad token answer: never redeemed, written or shared;
the last good one stays. And shutdown closes every part whatever one part raises."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from broker.core.credentials.refresh_token import REFRESH_TOKEN_LIMIT
from tests.conftest import CLIENT_ID, HEADERS, make_settings
from tests.hostile import Hostile, raw_json
from tests.support import Daemon, unix_config

GRAPH = "https://graph.microsoft.com/.default"
BAD = {
    "lone surrogate": "rt-\ud800-x",
    "empty": "",
    "control character": "rt-\x01-x",
    "space": "rt with space",
    "oversized": "r" * (REFRESH_TOKEN_LIMIT + 1),
    "not a string": 12345,
}


class Azure:
    """A hostile Azure AD: tenant `bad.example` answers with `bad` as the rotated refresh
    token, every other tenant with a fresh good one. Records the refresh tokens presented."""

    def __init__(self, bad: object) -> None:
        self.bad = bad
        self.presented: list[str] = []
        self.n = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.presented.append(str(form.get("refresh_token")))
        self.n += 1
        tenant = request.match_info["tenant"]
        exp = int(time.time()) + 3600
        access = jwt.encode({"exp": exp, "tid": tenant, "n": self.n}, "k" * 32, "HS256")
        rotated = self.bad if tenant == "bad.example" else f"rt-good-{self.n}"
        body = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
        body["refresh_token"] = rotated
        self.last_rotated = rotated
        return raw_json(json.dumps(body))  # json.dumps writes a lone surrogate as \ud800


def gdap(name: str, rt_file: Path) -> str:
    return (
        f'[profiles.{name}]\ncredential = "refresh_token"\nrefresh_token_file = "{rt_file}"\n'
        f'warm = false\ncustomer_tenants = ["*"]\ncustomer_scopes = ["{GRAPH}"]\n'
    )


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
async def test_an_unusable_rotated_refresh_token_is_refused_and_the_last_good_one_kept(
    secret, start_broker, tmp_path, bad
) -> None:
    rt_file = tmp_path / "rt"
    rt_file.write_text("rt-first\n")
    async with Hostile() as hostile:
        azure = Azure(bad)
        hostile.aad = azure
        settings = make_settings(hostile, secret, profiles=gdap("gdap", rt_file))
        b = await start_broker(settings)
        r = await b.get("/v1/token/gdap", params={"tenant": "bad.example"})
        assert r.status == 502, await r.text()
        assert (await r.json())["error"]["code"] == "upstream_bad_token"
        assert rt_file.read_text() == "rt-first\n"  # the last good one stays
        for tenant in ("good.example", "good-two.example"):
            r = await b.get("/v1/token/gdap", params={"tenant": tenant})
            assert r.status == 200, await r.text()
        r = await b.get("/v1/token/gdap?kind=aad")
        assert r.status == 200, await r.text()
        assert azure.presented[:2] == ["rt-first", "rt-first"]  # never the bad one
        assert all(p.startswith("rt-") and p != str(bad) for p in azure.presented)
        await b.broker.credentials["gdap"].settled()
        assert rt_file.read_text().startswith("rt-good-")
        assert "Traceback" not in b.logs.getvalue()


async def test_shutdown_closes_every_part_when_one_raises(
    sandbox, secret, start_broker, tmp_path
) -> None:
    """One profile's credential raises at close: the other profile's held-back refresh token
    still reaches its file, the upstream session closes, the failure is logged."""
    sandbox.state.register_customer("t1.example")
    sandbox.state.register_customer("t2.example")
    app = sandbox.state.apps[CLIENT_ID]
    files = {}
    for name in ("first", "second"):
        files[name] = tmp_path / f"{name}-rt"
        files[name].write_text(sandbox.state.issue_refresh_token(app) + "\n")
    settings = make_settings(
        sandbox, secret, profiles=gdap("first", files["first"]) + gdap("second", files["second"])
    )
    b = await start_broker(settings)
    broker = b.broker
    for tenant in ("t1.example", "t2.example"):  # the second rotation is held back
        assert (await b.get("/v1/token/second", params={"tenant": tenant})).status == 200
    held = broker.credentials["second"].refresh_token._unsaved
    assert held is not None and held not in files["second"].read_text()

    async def broken_close() -> None:
        raise RuntimeError("a part that fails to close")

    broker.runtime.profiles["first"].credential.close = broken_close  # type: ignore[method-assign]
    await broker.close()
    assert files["second"].read_text().strip() == held
    assert broker._session is None or broker._session.closed
    assert "close_failed" in b.logs.getvalue()


async def test_sigterm_after_an_unusable_refresh_token_exits_0_and_writes_every_profile(
    secret, daemon, tmp_path
) -> None:
    """A real `serve`: one profile is answered an unusable rotated refresh token right after a
    good one (inside the write-back burst window), another holds a rotation back; SIGTERM then
    exits 0, writes the other profile's refresh token and leaves no session unclosed."""
    sock = tmp_path / "b.sock"
    files = {n: tmp_path / f"{n}-rt" for n in ("gdap", "other")}
    for path in files.values():
        path.write_text("rt-first\n")
    async with Hostile() as hostile:
        azure = Azure("rt-\ud800-x")
        hostile.aad = azure
        profiles = gdap("gdap", files["gdap"]) + gdap("other", files["other"])
        d: Daemon = await daemon(unix_config(hostile, sock, profiles=profiles))
        await d.wait_for("listening")
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as s:

            async def status(profile: str, tenant: str) -> int:
                url = f"http://localhost/v1/token/{profile}"
                async with s.get(url, params={"tenant": tenant}, headers=HEADERS) as r:
                    await r.read()
                    return r.status

            assert await status("gdap", "good.example") == 200
            assert await status("gdap", "bad.example") == 502
            assert await status("other", "t1.example") == 200
            assert await status("other", "t2.example") == 200
        held = azure.last_rotated
        assert await d.stop() == 0
        assert d.proc.stderr is not None
        rest = (await d.proc.stderr.read()).decode()
        assert "Unclosed client session" not in rest and "Traceback" not in rest
        assert files["other"].read_text().strip() == held
        assert files["gdap"].read_text().strip().startswith("rt-good-")
