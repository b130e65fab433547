"""One flight per key: golang's singleflight in asyncio.

`SingleFlight.join(key, start)` returns the task in flight for `key`, or starts `start()` as
one. Every waiter awaits the same task through `wait()`, shielded, so a waiter that goes away
(a caller that hung up, a wait that timed out) never cancels the work the others wait for. The
key is removed inside the task itself, in its `finally`, so a flight that has finished is never
joined: a failure is never cached here (remembering failures is the caller's policy), and the
next `join` after it starts afresh. A flight nobody awaits (a background refresh) has its
exception retrieved, so asyncio never logs "exception was never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}  # guarded by the event loop: one thread

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: K) -> asyncio.Task[V] | None:
        """The flight in progress for `key`, if any."""
        return self._flights.get(key)

    def tasks(self) -> list[asyncio.Task[V]]:
        return list(self._flights.values())

    def join(self, key: K, start: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """The flight for `key`: the one in progress, or `start()` launched now."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fly(key, start))
            task.add_done_callback(_retrieve)
            self._flights[key] = task
        return task

    async def _fly(self, key: K, start: Callable[[], Awaitable[V]]) -> V:
        try:
            return await start()
        finally:
            del self._flights[key]

    @staticmethod
    async def wait(
        task: asyncio.Task[V], timeout: float, on_timeout: Callable[[], BaseException]
    ) -> V:
        """`task`'s result, waiting at most `timeout` seconds: then `on_timeout()` is raised
        and the flight goes on for the others."""
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise on_timeout() from None


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
