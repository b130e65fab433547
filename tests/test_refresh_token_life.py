"""The SAM refresh token's life: when it was last redeemed (the file's mtime carries it across
restarts), its age in /v1/profiles, `status` and the metric, and the keep-alive that redeems
an idle profile's refresh token every `keep_alive_days` (on a fake clock: no waiting)."""

from __future__ import annotations

import asyncio
import json
import os

from tests.conftest import CLIENT_ID, HEADERS, make_settings
from tests.support import refresh_token_profile, until

DAY = 86400.0


def rt_settings(sandbox, secret, tmp_path, extra: str = "", *, age_days: float = 0.0):
    """A refresh_token profile `user` (not warm: nobody asks, nothing redeems it) whose file
    was placed `age_days` ago (by the sandbox's clock)."""
    app = sandbox.state.apps[CLIENT_ID]
    rt_file = tmp_path / "refresh-token"
    rt_file.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    rt_file.chmod(0o600)
    placed = sandbox.state.now() - age_days * DAY
    os.utime(rt_file, (placed, placed))
    return (
        make_settings(sandbox, secret, profiles=refresh_token_profile(rt_file, extra)),
        rt_file,
        app,
    )


def redemptions(sandbox) -> int:
    return sum(1 for c in sandbox.state.calls if c.form.get("grant_type") == "refresh_token")


async def profiles(b) -> dict:
    r = await b.get("/v1/profiles", headers=HEADERS)
    assert r.status == 200
    return (await r.json())["profiles"]


async def test_an_idle_profile_redeems_its_refresh_token_every_keep_alive_days(
    fake_sandbox, secret, tmp_path, clock, start_broker
):
    settings, rt_file, app = rt_settings(fake_sandbox, secret, tmp_path, "keep_alive_days = 7")
    b = await start_broker(settings, clock=clock)
    credential = b.broker.credentials["user"]
    await asyncio.sleep(0)
    assert redemptions(fake_sandbox) == 0  # placed just now: nothing to keep alive yet
    for week in range(13):  # 13 weeks, past Azure AD's 90 days of inactivity
        seen = redemptions(fake_sandbox)
        due_in = credential.last_redeemed() + 7 * DAY - clock.time()
        assert 7 * DAY - 2 * 3600 - 120 <= due_in <= 7 * DAY, due_in
        clock.advance(due_in - 60)
        await asyncio.sleep(0.02)
        assert redemptions(fake_sandbox) == seen, f"week {week}: redeemed too early"
        clock.advance(120)
        await until(lambda n=seen: redemptions(fake_sandbox) > n, f"week {week}'s redemption")
        await credential.settled()
        # The refreshed entry counts as used for an hour: its refresh ahead redeems once more.
        clock.advance(2 * 3600)
        await asyncio.sleep(0.02)
        await credential.settled()
        assert redemptions(fake_sandbox) - seen <= 2
        assert clock.time() - credential.last_redeemed() <= 2 * 3600 + 60
    # Every redemption rotated the token and wrote it back: the file holds a live one.
    assert rt_file.read_text().strip() in app.refresh_tokens
    life = (await profiles(b))["user"]["refresh_token"]
    assert (
        life["age_s"] <= 7300 and 89.9 <= life["days_left"] <= 90 and life["keep_alive_days"] == 7
    )


async def test_a_profile_in_use_is_not_redeemed_again_by_the_keep_alive(
    fake_sandbox, secret, tmp_path, clock, start_broker
):
    settings, _, _ = rt_settings(fake_sandbox, secret, tmp_path, "keep_alive_days = 7")
    b = await start_broker(settings, clock=clock)
    clock.advance(5 * DAY)
    r = await b.get("/v1/token/user", params={"kind": "aad"}, headers=HEADERS)
    assert r.status == 200
    clock.advance(3600)  # the entry's own refresh ahead of expiry (it was in use): one more
    await until(lambda: redemptions(fake_sandbox) == 2, "the refresh ahead")
    await b.broker.credentials["user"].settled()
    wall = b.broker.credentials["user"].last_redeemed()
    last = clock.monotonic() - (clock.time() - wall)  # when the refresh ahead ran
    clock.advance(2 * DAY)  # 7 days after placing, 2 after the last redemption
    await asyncio.sleep(0.05)
    assert redemptions(fake_sandbox) == 2
    clock.advance(last + 7 * DAY - clock.monotonic() - 120)
    await asyncio.sleep(0.05)
    assert redemptions(fake_sandbox) == 2, "redeemed before keep_alive_days"
    clock.advance(240)  # 7 days after the last redemption
    await until(lambda: redemptions(fake_sandbox) == 3, "the keep-alive redemption")


async def test_the_age_survives_a_restart_through_the_files_mtime(
    fake_sandbox, secret, tmp_path, clock, start_broker
):
    """A file placed 80 days ago: the first broker sees its age at once (no redemption of its
    own yet), redeems it (keep-alive overdue), and the mtime then says so to the next one."""
    settings, rt_file, _ = rt_settings(fake_sandbox, secret, tmp_path, age_days=80)
    first = await start_broker(settings, clock=clock)
    clock.advance(1)  # the fake clock fires timers (the keep-alive's, due now) as it moves
    await until(lambda: redemptions(fake_sandbox) == 1, "the overdue keep-alive")
    # The sandbox has the call; the flight then writes the rotated token back (settled()
    # covers only a coalesced write-back): wait for the file to say so.
    await until(lambda: abs(os.stat(rt_file).st_mtime - clock.time()) < 5, "the write-back")
    await first.broker.credentials["user"].settled()
    clock.advance(3 * DAY)
    second = await start_broker(settings, clock=clock)
    life = (await profiles(second))["user"]["refresh_token"]
    assert 3 * DAY - 10 < life["age_s"] < 3 * DAY + 10
    assert life["days_left"] == 87.0


async def test_age_in_metrics_and_status(fake_sandbox, secret, tmp_path, clock, start_broker):
    settings, _, _ = rt_settings(
        fake_sandbox, secret, tmp_path, "keep_alive_days = 80", age_days=79
    )
    b = await start_broker(settings, clock=clock)
    text = await (await b.get("/metrics")).text()
    (line,) = [x for x in text.splitlines() if x.startswith("broker_refresh_token_age_seconds")]
    assert 'profile="user"' in line
    assert abs(float(line.split()[-1]) - 79 * DAY) < 10
    from broker.cli.summary import customer_lines

    lines = customer_lines(await profiles(b))
    assert any("user: refresh token last redeemed 79d ago" in x and "11 days left" in x
               for x in lines), lines  # fmt: skip
    assert any(x.startswith("warning: user:") and "14 days" in x for x in lines), lines
    assert "default" not in json.dumps([x for x in lines if "refresh token" in x])
