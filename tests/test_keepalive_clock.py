"""The keep-alive against a wall clock that lies, on the fake clock: a refresh_token_file whose
mtime is in the future (touched by an operator with a date, restored from a backup made on a
machine whose clock was ahead, the clock set back since), a long suspend (monotonic time
stands still while the wall clock runs on), and a dead refresh token (each failed redemption
waits longer, up to a day, instead of asking Azure AD every hour forever)."""

from __future__ import annotations

import asyncio
import os

from tests.conftest import CLIENT_ID
from tests.support import until
from tests.test_refresh_token_life import DAY, redemptions, rt_settings


def kept_alive(b) -> int:
    """Keep-alive redemptions finished (logged): the clock may move on without landing in the
    middle of one (a token arriving an hour late is refused as expired)."""
    return b.logs.getvalue().count('"refresh_token_kept_alive"')


async def test_a_future_mtime_is_not_believed(fake_sandbox, secret, tmp_path, clock, start_broker):
    """A year ahead: believed, the keep-alive would wait a year and the token die at 90 days.
    It redeems at once instead (the record says nothing true), and then every 7 days, without
    a storm even if the file's mtime stays in the future."""
    settings, rt_file, _ = rt_settings(fake_sandbox, secret, tmp_path, "keep_alive_days = 7")
    ahead = clock.time() + 365 * DAY  # a backup from a clock a year ahead, or the clock set back
    os.utime(rt_file, (ahead, ahead))
    b = await start_broker(settings, clock=clock)
    clock.advance(1)
    await until(lambda: kept_alive(b) == 1, "the keep-alive at once")
    for _ in range(24):  # the lying mtime comes back (restored again), every hour
        await b.broker.credentials["user"].settled()
        os.utime(rt_file, (ahead, ahead))
        clock.advance(3600)
        await asyncio.sleep(0.01)
    assert redemptions(fake_sandbox) <= 3, "a storm"
    clock.advance(7 * DAY)
    await until(lambda: redemptions(fake_sandbox) >= 3, "the next week's keep-alive")


async def test_a_long_suspend_is_noticed_by_the_wall_clock(
    fake_sandbox, secret, tmp_path, clock, start_broker
):
    """Suspended for 10 days: the monotonic clock stood still (CLOCK_MONOTONIC does not count
    a suspend), so a timer armed for 7 days of it still had days to go. The keep-alive looks at
    the wall clock again within hours, redeems once, and does not storm."""
    settings, _, _ = rt_settings(fake_sandbox, secret, tmp_path, "keep_alive_days = 7")
    b = await start_broker(settings, clock=clock)
    await asyncio.sleep(0)
    clock.advance(DAY)
    clock.jump_wall(10 * DAY)  # the suspend: wall time runs on, monotonic does not
    clock.advance(6 * 3600 + 60)
    await until(lambda: kept_alive(b) == 1, "the keep-alive after the suspend")
    await b.broker.credentials["user"].settled()
    clock.advance(DAY)
    await asyncio.sleep(0.05)
    assert redemptions(fake_sandbox) <= 2  # the keep-alive's, and at most the entry's own


async def test_a_failing_keep_alive_backs_off_up_to_a_day(
    fake_sandbox, secret, tmp_path, clock, start_broker
):
    settings, _, _ = rt_settings(fake_sandbox, secret, tmp_path, "keep_alive_days = 7", age_days=8)
    fake_sandbox.state.apps[CLIENT_ID].refresh_token_refusal = 700082  # dead of inactivity
    await start_broker(settings, clock=clock)
    clock.advance(1)
    await until(lambda: redemptions(fake_sandbox) >= 1, "the overdue keep-alive")
    for _ in range(10 * 24):  # ten days, an hour at a time
        clock.advance(3600)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    # Every hour for ten days would be 240 (the credential stops redeeming a dead token).
    assert redemptions(fake_sandbox) <= 20, redemptions(fake_sandbox)
