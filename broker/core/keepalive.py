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
from broker.core.tokens.clock import Clock, TimerHandle

DAY = 86400.0
# Azure AD's inactivity limit for a refresh token, and when the alert rule fires before it.
INACTIVITY_LIMIT = 90 * DAY
# After a failed keep-alive redemption, try again this much later (the entry's own backoff
# and the operator's `doctor` deal with the failure meanwhile).
RETRY = 3600.0


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
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.next_at: float | None = None  # monotonic: when the timer fires next

    def start(self) -> None:
        self._arm(self._due())

    def _due(self) -> float:
        """Monotonic time at which `period` has passed since the last redemption."""
        now = self._clock.monotonic()
        last = self._credential.last_redeemed()
        if last is None:
            return now
        return now + max(0.0, last + self.period - self._clock.time())

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if self._closed else self._clock.call_at(at, self._on_timer)
        self.next_at = at if self._timer is not None else None

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or (self._task is not None and not self._task.done()):
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
        self._log.info("refresh_token_kept_alive", profile=self._entry.profile)
        self._arm(self._due())

    def retire(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.next_at = None

    async def close(self) -> None:
        self.retire()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
