"""`pc-token-broker consent` attacked: by a hostile or broken Azure AD (an answer in slow
pieces, an interval of 0, endless slow_down, a redirect that would carry the device code
elsewhere) and by a hostile local user (a refresh_token_file in a directory anyone may write,
a symbolic link planted at its path). Nothing is written where it should not be, no secret is
echoed, and Azure AD is never polled faster than once a second."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.cli.consent import ConsentFailed, consent
from tests.test_consent import user_profile

DEVICE_CODE = "device-code-secret-0123456789abcdef"
REFRESH_TOKEN = "rt-real-value-0123456789abcdef"
START = {"device_code": DEVICE_CODE, "user_code": "ABCD-EFGH",
         "verification_uri": "https://microsoft.com/devicelogin", "expires_in": 900,
         "interval": 5}  # fmt: skip
ATTACKER = 4242  # a local user's uid


def tokens() -> dict:
    access = jwt.encode({"amr": ["pwd", "mfa"]}, "k" * 32, algorithm="HS256")
    return {"refresh_token": REFRESH_TOKEN, "access_token": access, "token_type": "Bearer"}


class Upstream:
    """A fake Azure AD on loopback: `start` answers /devicecode, `poll(n)` the n-th token poll
    (a web response, or a coroutine function of the request)."""

    def __init__(self, start=None, poll=None) -> None:
        self.start = start or START
        self.poll = poll or (lambda n: (200, tokens()))
        self.polls = 0
        self.requests: list[dict] = []

    async def __aenter__(self) -> Upstream:
        async def devicecode(_request: web.Request) -> web.StreamResponse:
            return web.json_response(self.start)

        async def token(request: web.Request) -> web.StreamResponse:
            self.polls += 1
            self.requests.append(dict(await request.post()))
            answer = self.poll(self.polls)
            if callable(answer):
                return await answer(request)
            status, body = answer
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/devicecode", devicecode)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


async def run(upstream: Upstream, secret, rt_file, clock) -> tuple[str, list[float]]:
    profile = user_profile(upstream, secret, rt_file)
    out = io.StringIO()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    async with aiohttp.ClientSession() as session:
        try:
            await consent(profile, out, session=session, sleep=sleep, monotonic=clock.monotonic)
        except ConsentFailed as e:
            out.write(f"\nFAILED: {e}")
    return out.getvalue(), sleeps


def secrets_absent(text: str) -> bool:
    return DEVICE_CODE not in text and REFRESH_TOKEN not in text


# -- a hostile or broken Azure AD -----------------------------------------------------------


async def test_an_answer_sent_in_slow_pieces_is_read_whole(tmp_path, secret, clock):
    """aiohttp's read(n) returns what has arrived, not n bytes: the tokens' JSON sent in two
    pieces must still be read whole (it was read as 'without JSON', the sign-in lost)."""
    body = json.dumps(tokens()).encode()

    async def in_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[:10])
        await asyncio.sleep(0.05)  # a slow upstream: the client has read the first piece
        await response.write(body[10:])
        await response.write_eof()
        return response

    rt_file = tmp_path / "rt"
    async with Upstream(poll=lambda n: in_pieces) as up:
        out, _ = await run(up, secret, rt_file, clock)
    assert "FAILED" not in out, out
    assert rt_file.read_text() == REFRESH_TOKEN + "\n" and secrets_absent(out)


async def test_an_interval_of_0_is_not_a_busy_poll(tmp_path, secret, clock):
    rt_file = tmp_path / "rt"
    pending = (400, {"error": "authorization_pending"})
    async with Upstream({**START, "interval": 0, "expires_in": 30}, lambda n: pending) as up:
        out, sleeps = await run(up, secret, rt_file, clock)
    assert "expired" in out and not rt_file.exists()
    assert sleeps and min(sleeps) >= 1, sleeps[:5]
    assert up.polls <= 30


async def test_endless_slow_down_ends_at_the_codes_expiry(tmp_path, secret, clock):
    rt_file = tmp_path / "rt"
    async with Upstream(poll=lambda n: (400, {"error": "slow_down"})) as up:
        out, sleeps = await run(up, secret, rt_file, clock)
    assert "expired" in out and not rt_file.exists()
    assert sum(sleeps) <= 900 + 60 and max(sleeps) == 60 and up.polls < 30


async def test_a_redirect_never_carries_the_device_code_elsewhere(tmp_path, secret, clock):
    elsewhere: list[dict] = []

    async def collect(request: web.Request) -> web.Response:
        elsewhere.append(dict(await request.post()))
        return web.json_response(tokens())

    app = web.Application()
    app.router.add_post("/collect", collect)
    thief = TestServer(app, host="127.0.0.1")
    await thief.start_server()
    try:
        target = str(thief.make_url("/collect"))

        async def redirect(_request: web.Request) -> web.Response:
            return web.Response(status=307, headers={"Location": target})

        rt_file = tmp_path / "rt"
        async with Upstream(poll=lambda n: redirect) as up:
            out, _ = await run(up, secret, rt_file, clock)
    finally:
        await thief.close()
    assert elsewhere == [], "the device code went to the redirect's target"
    assert "FAILED" in out and not rt_file.exists() and secrets_absent(out)


async def test_a_passing_outage_does_not_waste_the_sign_in(tmp_path, secret, clock):
    """Azure AD answers 503 (an HTML page) and 429 while the user signs in: the polling goes
    on; five failures in a row end it."""

    async def html_503(_request: web.Request) -> web.Response:
        return web.Response(status=503, text="<html>busy</html>", content_type="text/html")

    answers = {1: html_503, 2: (429, {"error": "temporarily_unavailable"}), 3: html_503}
    rt_file = tmp_path / "rt"
    async with Upstream(poll=lambda n: answers.get(n, (200, tokens()))) as up:
        out, _ = await run(up, secret, rt_file, clock)
    assert "FAILED" not in out, out
    assert rt_file.read_text() == REFRESH_TOKEN + "\n" and up.polls == 4
    rt_file.unlink()
    async with Upstream(poll=lambda n: html_503) as up:
        out, _ = await run(up, secret, rt_file, clock)
    assert "FAILED" in out and up.polls == 5 and not rt_file.exists()


# -- a hostile local user -------------------------------------------------------------------


@pytest.fixture
def as_root():
    assert os.geteuid() == 0, "these attacks need root to chown files to another user"


async def test_a_directory_anyone_may_write_is_refused(tmp_path, secret, clock, as_root):
    """In a sticky world-writable directory (/tmp's kind) a local user plants the file first;
    consent run as root kept the old file's owner: the new token would be theirs to read."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    rt_file = shared / "user.refresh-token"
    rt_file.write_text("planted\n")
    os.chown(rt_file, ATTACKER, ATTACKER)
    async with Upstream() as up:
        out, _ = await run(up, secret, rt_file, clock)
    assert "writable by others" in out and "enter the code" not in out  # refused first
    assert up.polls == 0 and rt_file.read_text() == "planted\n" and secrets_absent(out)
    leaked = [p for p in shared.iterdir() if REFRESH_TOKEN in p.read_text()]
    assert leaked == []


async def test_a_symbolic_link_at_the_path_is_refused(tmp_path, secret, clock, as_root):
    """A link to a file the attacker owns: its owner was given to the new token file."""
    theirs = tmp_path / "theirs"
    theirs.write_text("bait\n")
    os.chown(theirs, ATTACKER, ATTACKER)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    rt_file = state / "user.refresh-token"
    rt_file.symlink_to(theirs)
    async with Upstream() as up:
        out, _ = await run(up, secret, rt_file, clock)
    assert "symbolic link" in out and "enter the code" not in out and up.polls == 0
    assert rt_file.is_symlink() and theirs.read_text() == "bait\n"
    owned = [p for p in state.iterdir() if os.lstat(p).st_uid == ATTACKER and not p.is_symlink()]
    assert owned == [] and secrets_absent(out)


async def test_the_owner_of_a_regular_old_file_is_kept(tmp_path, secret, clock, as_root):
    """What the owner rule is for: root runs consent for the service user's file."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    rt_file = state / "user.refresh-token"
    rt_file.write_text("old\n")
    os.chown(rt_file, 1234, 1234)
    async with Upstream() as up:
        out, _ = await run(up, secret, rt_file, clock)
    st = os.stat(rt_file)
    assert rt_file.read_text() == REFRESH_TOKEN + "\n", out
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 1234, 0o600)
