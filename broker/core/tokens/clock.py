"""Time, injected. The cache and its scheduler only ever ask a `Clock`; tests pass a fake one.

Two readings: `monotonic()` for all expiry math (anchored when a token is received, immune to
wall-clock jumps), and `time()` (wall clock, epoch seconds) only to report `expires_on`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` once the monotonic clock reaches `deadline`."""
        ...


class SystemClock:
    """The real clock. Timers ride on the running event loop."""

    # The readings are the C functions themselves: no Python frame on the cache-hit path.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        # Not loop.call_at: uvloop's loop.time() is not time.monotonic().
        delay = max(0.0, deadline - time.monotonic())
        return asyncio.get_running_loop().call_later(delay, callback)


class Alarm:
    """One timer on a `Clock`: `arm(at)` sets (or moves) it, it runs `callback` once at `at`;
    closed, it never runs again. `at`: when it fires next (None: not armed). For the cache
    entries' refresh and the refresh-token keep-alive, each of which owns exactly one."""

    __slots__ = ("_callback", "_clock", "_handle", "at", "closed")

    def __init__(self, clock: Clock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._handle: TimerHandle | None = None
        self.at: float | None = None  # monotonic
        self.closed = False

    def arm(self, at: float) -> None:
        self.cancel()
        if not self.closed:
            self._handle = self._clock.call_at(at, self._ring)
            self.at = at

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.at = None

    def close(self) -> None:
        self.closed = True
        self.cancel()

    def _ring(self) -> None:
        self._handle = self.at = None
        if not self.closed:
            self._callback()
