"""The fan-out limits of a profile's customer tenants. `ColdFetchRate`: new (tenant, scope)
entries at most `customer_fetch_rate` a second after a burst of `customer_fetch_burst`, so one
caller cannot spend the partner's Azure AD budget on a flood of tenants. `FifoLimiter`: at most
`upstream_concurrency` Azure AD calls in flight, the rest queued in arrival order, so that no
broken customer slows another:

- one tenant holds at most its share of the slots (`share`: a quarter of the limit, at least
  one); its other calls wait while other tenants' go ahead;
- a call holds its slot at most until its deadline (`slot(key, deadline)`: a fraction of the
  upstream timeout); then it goes on outside the limit, as one of at most `limit` overdue calls,
  and its slot goes to the next in line. So calls that hang cost the others a deadline, never a
  timeout, and at most twice the limit are ever in flight.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from broker.core.errors import UpstreamError
from broker.core.tokens.clock import Clock

# One tenant holds at most this fraction of the profile's slots (at least one).
TENANT_SHARE = 0.25
# A call holds its slot at most this fraction of the upstream timeout.
SLOT_DEADLINE = 0.25


class FifoLimiter:
    """At most `limit` holders at once, at most `share` of them under one key; the others
    wait in arrival order (a waiter whose key is at its share lets those behind it pass)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.share = max(1, math.ceil(limit * TENANT_SHARE))
        self.active = 0
        self.peak = 0
        self.overdue = 0  # calls past their deadline, in flight outside the limit
        self._held: dict[str | None, int] = {}
        self._waiting: deque[tuple[str | None, asyncio.Future[None]]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for _, f in self._waiting if not f.done())

    async def __aenter__(self) -> None:
        await self._acquire(None)

    async def __aexit__(self, *exc: Any) -> None:
        self._release(None)

    @asynccontextmanager
    async def slot(self, key: str, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold a slot for `key` for the block, or until `deadline` seconds have passed."""
        await self._acquire(key)
        overdue = False

        def expire() -> None:
            nonlocal overdue
            if self.overdue < self.limit:
                overdue = True
                self.overdue += 1
                self._release(key)

        timer = None
        if deadline is not None:
            timer = asyncio.get_running_loop().call_later(deadline, expire)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            if overdue:
                self.overdue -= 1
            else:
                self._release(key)

    def _eligible(self, key: str | None) -> bool:
        return key is None or self._held.get(key, 0) < self.share

    def _take(self, key: str | None) -> None:
        self.active += 1
        self._held[key] = self._held.get(key, 0) + 1
        self.peak = max(self.peak, self.active)

    async def _acquire(self, key: str | None) -> None:
        # Whenever a slot is free, no waiter may take it (each release hands its slot to the
        # first waiter that may): so a free slot is this caller's if its key is under share.
        if self.active < self.limit and self._eligible(key):
            self._take(key)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((key, waiter))
        try:
            await waiter  # _release() hands its slot over: `_take` is already done
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(key)  # granted, then cancelled: pass the slot on
            raise

    def _release(self, key: str | None) -> None:
        self.active -= 1
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        waiting = self._waiting
        i = 0
        while i < len(waiting):
            k, waiter = waiting[i]
            if waiter.done():  # cancelled while waiting
                del waiting[i]
                continue
            if self._eligible(k):
                del waiting[i]
                self._take(k)
                waiter.set_result(None)
                return
            i += 1


class FetchRateExceeded(UpstreamError):
    """A new entry over the profile's cold-fetch rate: 429, come back after Retry-After."""

    status = 429
    code = "customer_fetch_rate"
    retryable = True


class ColdFetchRate:
    """A token bucket on the broker's clock: `burst` at once, then `rate` a second."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def take(self) -> float:
        """0.0 when one more cold fetch may go now (and it is counted); else the seconds until
        one may."""
        now = self._clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def refused(self, wait: float) -> FetchRateExceeded:
        return FetchRateExceeded(
            f"more than {self.rate:g} new customer-tenant tokens a second (burst "
            f"{self.burst}): try again later",
            endpoint="aad",
            retry_after=wait,
        )
