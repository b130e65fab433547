"""`pc-token-broker consent`: the device-code flow end to end against the sandbox's /devicecode
and device_code grant, on a fake clock (the injected sleep advances it: no waiting), with each
of its answers: authorization_pending, slow_down, expired_token, authorization_declined and
access_denied; the MFA check; the file written 0600, atomically, never echoed; and the
command line as a whole."""

from __future__ import annotations

import asyncio
import io
import os
import stat

import aiohttp
import pytest

from broker.cli.consent import ConsentFailed, consent
from broker.cli.main import main
from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID, HEADERS, config_text
from tests.support import refresh_token_profile


def user_profile(sandbox, secret, rt_file):
    text = config_text(sandbox, profiles=refresh_token_profile(rt_file))
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret}, mode="offline")
    return settings.profiles["user"]


class User:
    """The person at the browser, on the fake clock: `act[n]` runs before the n-th poll."""

    def __init__(self, sandbox, clock, act=None) -> None:
        self.device = sandbox.state.device
        self.clock = clock
        self.act = act or {}
        self.sleeps: list[float] = []

    @property
    def code(self) -> str:
        return self.device.latest.user_code

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        action = self.act.get(len(self.sleeps))
        if action is not None:
            action(self)


async def run(sandbox, clock, profile, user: User, **kwargs) -> str:
    out = io.StringIO()
    async with aiohttp.ClientSession() as session:
        await consent(
            profile, out, session=session, sleep=user.sleep, monotonic=clock.monotonic, **kwargs
        )
    return out.getvalue()


@pytest.fixture
def rt_file(tmp_path):
    return tmp_path / "state" / "user.refresh-token"


@pytest.fixture
def profile(fake_sandbox, secret, rt_file):
    rt_file.parent.mkdir()
    return user_profile(fake_sandbox, secret, rt_file)


async def test_pending_then_approved_with_mfa_writes_the_token_0600_never_echoed(
    fake_sandbox, clock, profile, rt_file, secret, start_broker
):
    user = User(fake_sandbox, clock, {3: lambda u: u.device.approve(u.code, mfa=True)})
    out = await run(fake_sandbox, clock, profile, user)
    assert user.sleeps == [5, 5, 5]  # two authorization_pending, then the tokens
    token = rt_file.read_text().strip()
    app = fake_sandbox.state.apps[CLIENT_ID]
    assert token in app.refresh_tokens
    assert stat.S_IMODE(os.stat(rt_file).st_mode) == 0o600
    assert token not in out
    assert "https://microsoft.com/devicelogin" in out and "had MFA" in out
    assert [f for f in os.listdir(rt_file.parent) if f != rt_file.name] == []  # no temp left
    # The broker redeems what consent wrote.
    text = config_text(fake_sandbox, profiles=refresh_token_profile(rt_file))
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret})
    b = await start_broker(settings, clock=clock)
    r = await b.get("/v1/token/user", params={"kind": "aad"}, headers=HEADERS)
    assert r.status == 200
    assert (await (await b.get("/v1/profiles", headers=HEADERS)).json())["profiles"]["user"][
        "mfa"
    ] is True


async def test_slow_down_adds_five_seconds_each_time(fake_sandbox, clock, profile, rt_file):
    def slow(u):
        u.device.slow_down(u.code, 2)

    user = User(fake_sandbox, clock, {1: slow, 4: lambda u: u.device.approve(u.code)})
    await run(fake_sandbox, clock, profile, user)
    assert user.sleeps == [5, 10, 15, 15]
    assert rt_file.exists()


async def test_expired_token_from_azure_ad_writes_nothing(fake_sandbox, clock, profile, rt_file):
    def expire(u):
        u.device.latest.expires_at = clock.time()  # Azure AD's clock says it is over

    user = User(fake_sandbox, clock, {2: expire})
    with pytest.raises(ConsentFailed, match="expired"):
        await run(fake_sandbox, clock, profile, user)
    assert len(user.sleeps) == 2 and not rt_file.exists()


async def test_expires_in_ends_the_polling_on_our_own_clock_too(
    fake_sandbox, clock, profile, rt_file
):
    """A pending flow is polled until its expires_in (900 s) has passed, then given up,
    whatever Azure AD keeps saying."""
    user = User(fake_sandbox, clock, {1: lambda u: setattr(u.device.latest, "expires_at", 1e12)})
    with pytest.raises(ConsentFailed, match="expired"):
        await run(fake_sandbox, clock, profile, user)
    assert sum(user.sleeps) == 900 and len(user.sleeps) == 180
    polls = fake_sandbox.state.counts["aad"] - 1  # the /devicecode call
    assert polls == 179 and not rt_file.exists()


@pytest.mark.parametrize("error", ["authorization_declined", "access_denied"])
async def test_a_declined_sign_in_writes_nothing(fake_sandbox, clock, profile, rt_file, error):
    rt_file.write_text("the-old-token\n")
    user = User(fake_sandbox, clock, {2: lambda u: u.device.decline(u.code, error=error)})
    with pytest.raises(ConsentFailed, match="declined"):
        await run(fake_sandbox, clock, profile, user)
    assert rt_file.read_text() == "the-old-token\n"


async def test_a_sign_in_without_mfa_is_refused_unless_allowed(
    fake_sandbox, clock, profile, rt_file
):
    rt_file.write_text("the-old-token\n")
    user = User(fake_sandbox, clock, {1: lambda u: u.device.approve(u.code, mfa=False)})
    with pytest.raises(ConsentFailed, match="no MFA"):
        await run(fake_sandbox, clock, profile, user)
    assert rt_file.read_text() == "the-old-token\n"
    user = User(fake_sandbox, clock, {1: lambda u: u.device.approve(u.code, mfa=False)})
    out = await run(fake_sandbox, clock, profile, user, allow_no_mfa=True)
    assert (
        "NO MFA" in out
        and rt_file.read_text().strip() in fake_sandbox.state.apps[CLIENT_ID].refresh_tokens
    )


async def test_an_unknown_app_is_refused_at_the_device_code(fake_sandbox, clock, secret, rt_file):
    rt_file.parent.mkdir()
    text = config_text(fake_sandbox, profiles=refresh_token_profile(rt_file))
    text = text.replace(
        f'client_id = "{CLIENT_ID}"', 'client_id = "99999999-0000-4000-8000-000000000000"'
    )
    profile = parse_settings(text, env={"TEST_CLIENT_SECRET": secret}, mode="offline").profiles[
        "user"
    ]
    with pytest.raises(ConsentFailed, match="AADSTS700016"):
        await run(fake_sandbox, clock, profile, User(fake_sandbox, clock))


async def test_the_command_line_end_to_end(sandbox, secret, tmp_path, capsys, monkeypatch):
    """`pc-token-broker consent user --config FILE`, the user already signed in (the sandbox
    approves at once; its interval is 0, so no waiting): exit 0, the file written, the token
    on no output; a decline is exit 1; usage errors exit 2."""
    monkeypatch.setenv("TEST_CLIENT_SECRET", secret)
    rt = tmp_path / "user.refresh-token"
    config = tmp_path / "config.toml"
    config.write_text(config_text(sandbox, profiles=refresh_token_profile(rt)))
    config.chmod(0o600)
    sandbox.state.device.interval = 0
    sandbox.state.device.auto = "approved"
    loop = asyncio.get_running_loop()

    async def cli(*argv: str) -> int:
        return await loop.run_in_executor(None, main, list(argv))

    assert await cli("consent", "user", "--config", str(config)) == 0
    captured = capsys.readouterr()
    token = rt.read_text().strip()
    assert token in sandbox.state.apps[CLIENT_ID].refresh_tokens
    assert token not in captured.out + captured.err and "enter the code" in captured.out
    sandbox.state.device.auto = "authorization_declined"
    assert await cli("consent", "user", "--config", str(config)) == 1
    assert "declined" in capsys.readouterr().err and rt.read_text().strip() == token
    assert await cli("consent", "nosuch", "--config", str(config)) == 2
    assert await cli("consent", "default", "--config", str(config)) == 2
    assert "credential" in capsys.readouterr().err


# -- a hostile Azure AD: what consent believes of its answers ----------------------------------

GOOD_START = {"device_code": "dc", "user_code": "UC", "verification_uri": "https://x.example/d",
              "expires_in": 900, "interval": 5}  # fmt: skip


def _jwt(claims: dict) -> str:
    import jwt

    return jwt.encode(claims, "k" * 32, algorithm="HS256")


HOSTILE = {
    "oversized start": ((200, "x" * 70_000), None, "more than"),
    "start not JSON": ((200, "<html>portal</html>"), None, "without JSON"),
    "start nested deep": ((200, "[" * 30_000 + "]" * 30_000), None, "without JSON"),
    "start a list": ((200, "[1, 2]"), None, "without a JSON object"),
    "start not UTF-8": ((200, b'{"device_code": "\xff\xfe"}'), None, "without JSON"),
    "poll not UTF-8": ((200, GOOD_START), (200, b'{"refresh_token": "\xff"}'), "without JSON"),
    "poll oversized": ((200, GOOD_START), (200, b" " * 70_000 + b"{}"), "more than"),
    "poll nested deep": ((200, GOOD_START), (400, "[" * 30_000), "without JSON"),
    "start Infinity expires_in": (
        (200, {**GOOD_START, "expires_in": float("inf")}),
        None,
        "expires_in",
    ),
    "interval NaN": ((200, {**GOOD_START, "interval": float("nan")}), None, "interval"),
    "interval huge": ((200, {**GOOD_START, "interval": 10**9}), None, "interval"),
    "expires_in negative": ((200, {**GOOD_START, "expires_in": -1}), None, "expires_in"),
    "no device_code": ((200, {**GOOD_START, "device_code": None}), None, "lacks"),
    "escapes in the user code": (
        (200, {**GOOD_START, "user_code": "UC\x1b]0;owned\x07"}),
        (400, {"error": "authorization_declined"}),
        "declined",
    ),
    "token with spaces": (
        (200, GOOD_START),
        (200, {"refresh_token": "two words", "access_token": _jwt({"amr": ["mfa"]})}),
        "usable refresh token",
    ),
    "token not a string": (
        (200, GOOD_START),
        (200, {"refresh_token": ["a"], "access_token": _jwt({"amr": ["mfa"]})}),
        "usable refresh token",
    ),
    "token too long": (
        (200, GOOD_START),
        (200, {"refresh_token": "a" * 20_000, "access_token": _jwt({"amr": ["mfa"]})}),
        "usable refresh token",
    ),
    "amr not a list": (
        (200, GOOD_START),
        (200, {"refresh_token": "rt-hostile-1", "access_token": _jwt({"amr": "mfa"})}),
        "no MFA",
    ),
    "unknown error": (
        (200, GOOD_START),
        (
            400,
            {
                "error": "invalid_grant\x1b[31m",
                "error_codes": [70000],
                "error_description": "AADSTS70000: bad\r\nTrace ID: x",
            },
        ),
        "AADSTS70000",
    ),
}


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_azure_ad_gets_nothing_written(tmp_path, clock, secret, case):
    import json as _json

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    start, answer, words = case

    def reply(status_body):
        status, body = status_body
        if isinstance(body, bytes):  # bytes as they are: not UTF-8, say
            return web.Response(status=status, body=body, content_type="application/json")
        text = body if isinstance(body, str) else _json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")

    async def devicecode(_request):
        return reply(start)

    async def token_(_request):
        return reply(answer or (400, {"error": "authorization_pending"}))

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", devicecode)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token_)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:

        class Fake:
            url = str(server.make_url("")).rstrip("/")

        rt_file = tmp_path / "user.refresh-token"
        profile = user_profile(Fake, secret, rt_file)
        out = io.StringIO()

        async def sleep(seconds: float) -> None:
            clock.advance(seconds)

        async with aiohttp.ClientSession() as session:
            with pytest.raises(ConsentFailed, match=words) as raised:
                await consent(profile, out, session=session, sleep=sleep, monotonic=clock.monotonic)
        assert not rt_file.exists()
        said = str(raised.value) + out.getvalue()
        assert "\x1b" not in said and "rt-hostile-1" not in said and "two words" not in said
    finally:
        await server.close()
