"""A deadline that moves often and rarely comes, kept with at most one loop timer: a
connection's (`broker.http.protocol.Gate`), which every request head sets and clears.

Moving it is setting a number (`at`; 0 is none). The timer, when it runs, calls back only if
the deadline in force has come; for a later one it sets itself again. So a connection whose
heads arrive in time costs no timer work per request; the timer is only made again sooner
when the deadline moves earlier (a reload shortened read_timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_due", "_loop", "_timer", "_timer_at", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, due: Callable[[], None]) -> None:
        self._loop = loop
        self._due = due  # called (once) when the deadline in force comes
        self.at = 0.0  # loop time the deadline in force comes; 0: none
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # loop time the timer runs

    def set(self, at: float) -> None:
        """Enforce `at` (loop time) from now on."""
        self.at = at
        timer = self._timer
        if timer is None or self._timer_at > at:
            if timer is not None:
                timer.cancel()
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._run)

    def cancel(self) -> None:
        """No deadline, and no timer: the connection is gone."""
        self.at = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run(self) -> None:
        self._timer = None
        at = self.at
        if not at:
            return
        if at > self._timer_at:  # moved on since the timer was set: wait for it
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._run)
            return
        self.at = 0.0
        self._due()
