"""Keeping an idle profile's refresh token alive: Azure AD lets a refresh token die after 90
days without a redemption (AADSTS700082). A profile in use, or warm, redeems it every hour or
so anyway; one nobody asks for would not. `KeepAlive` redeems it (a refresh of the profile's
`aad` entry, joining one in flight) whenever `keep_alive_days` have passed since the last
redemption, which the credential records (`Credential.last_redeemed`: the refresh-token file's
mtime, so a restart does not reset the count).
"""

from __future__ import annotations

import asyncio
from typing import Any

from broker.core.cache import Entry
from broker.core.credentials import Credential
from broker.core.errors import UpstreamError
from broker.core.tokens.clock import Alarm, Clock

DAY = 86400.0
# Azure AD's inactivity limit for a refresh token, and when the alert rule fires before it.
INACTIVITY_LIMIT = 90 * DAY
# After a failed keep-alive redemption, try again this much later (the entry's own backoff
# and the operator's `doctor` deal with the failure meanwhile).
RETRY = 3600.0
# The timer looks at the wall clock again at least this often: monotonic time stands still
# through a suspend, and the wall clock can be stepped; the due time is the wall clock's.
RECHECK = 6 * 3600.0
# A last redemption this far ahead of the wall clock is a record that lies (clock skew of a
# network file system stays well within it).
FUTURE_SLACK = 300.0


def token_life(last_redeemed: float | None, now: float) -> dict[str, Any] | None:
    """The refresh token's age and the days left before the inactivity limit, at wall `now`."""
    if last_redeemed is None:
        return None
    age = max(0.0, now - last_redeemed)
    return {
        "last_redeemed": round(last_redeemed),
        "age_s": round(age),
        "days_left": round((INACTIVITY_LIMIT - age) / DAY, 1),
    }


class KeepAlive:
    """One profile's keep-alive timer. Event loop only; the clock is injected."""

    def __init__(
        self, credential: Credential, entry: Entry, days: float, *, clock: Clock, log: Any
    ) -> None:
        self._credential = credential
        self._entry = entry
        self.period = days * DAY
        self._clock = clock
        self._log = log
        self._alarm = Alarm(clock, self._on_timer)
        self._task: asyncio.Task[None] | None = None
        self._due_at: float | None = None  # monotonic: when the redemption is due
        self._redeemed: float | None = None  # wall: this keep-alive's last redemption

    def start(self) -> None:
        self._arm(self._due())

    def _due(self) -> float:
        """Monotonic time at which `period` has passed since the last redemption, never more
        than `period` from now. A record from the future (the file's mtime set by a touch with
        a date, a backup from a clock ahead, the clock set back since) is not believed: then
        only this keep-alive's own last redemption counts, and none means now."""
        now = self._clock.monotonic()
        wall = self._clock.time()
        last = self._credential.last_redeemed()
        if last is not None and last > wall + FUTURE_SLACK:
            last = self._redeemed
        if last is None:
            return now
        return now + min(self.period, max(0.0, last + self.period - wall))

    @property
    def next_at(self) -> float | None:
        """Monotonic: when the redemption is due (the timer may look at the clock sooner)."""
        return self._due_at if self._alarm.at is not None else None

    def _arm(self, at: float) -> None:
        """Fire at `at`, or at the next RECHECK if sooner (then `_on_timer` asks again)."""
        self._alarm.arm(min(at, self._clock.monotonic() + RECHECK))
        self._due_at = at if self._alarm.at is not None else None

    def _on_timer(self) -> None:
        if self._task is not None and not self._task.done():
            return
        due = self._due()
        if due > self._clock.monotonic():  # redeemed meanwhile (a caller, a warm refresh)
            self._arm(due)
            return
        self._task = asyncio.get_running_loop().create_task(self._redeem())

    async def _redeem(self) -> None:
        try:
            await self._entry.refresh()
        except UpstreamError as e:
            self._log.warning(
                "refresh_token_keep_alive_failed",
                profile=self._entry.profile,
                error=e.code,
                aadsts=e.aadsts,
                retry_in_s=RETRY,
            )
            self._arm(self._clock.monotonic() + RETRY)
            return
        self._redeemed = self._clock.time()
        self._log.info("refresh_token_kept_alive", profile=self._entry.profile)
        self._arm(self._due())

    def retire(self) -> None:
        self._alarm.close()

    async def close(self) -> None:
        self.retire()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
