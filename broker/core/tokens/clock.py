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
