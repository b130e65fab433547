"""The fan-out limit of a profile's customer tenants: at most `upstream_concurrency` Azure AD
calls in flight, the rest queued in arrival order."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any


class FifoLimiter:
    """At most `limit` holders at once; the others wait in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.peak = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiting if not f.done())

    async def __aenter__(self) -> None:
        if self.active < self.limit and not self._waiting:
            self.active += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter  # release() hands its slot over: `active` is already counted
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # granted, then cancelled: pass the slot on
                raise
        self.peak = max(self.peak, self.active)

    async def __aexit__(self, *exc: Any) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
