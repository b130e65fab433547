"""The fleet-wide single flight: a broker holds a token's lease while it fetches, so the others
wait for its result instead of fetching too.

The lease is redis-py's asyncio `Lock` on `<token key>:lease`: `SET NX PX lock_timeout` with a
value only its holder knows (128 random bits, hex), renewed by compare-and-reset-expiry and
released by compare-and-delete (`Lock.LUA_REACQUIRE_SCRIPT`, `LUA_RELEASE_SCRIPT`), so a holder
whose lease already lapsed can never extend or delete another broker's. Every command goes
through the `RedisLink` (Redis trouble is `Unavailable`); "not ours any more" is an answer
(False), not a Redis failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

from broker.core.cache.shared.link import RedisLink, Unavailable, unbudgeted

LEASE_SUFFIX = ":lease"

# Bound a lease found held by another: one with no expiry is no broker's (every lease is SET
# with PX and renewed by PEXPIRE), so it is deleted (-1: lapsed, take it); one that would
# live longer than lock_timeout is cut to lock_timeout (1); any other is left alone (0).
BOUND_LEASE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then redis.call('DEL', KEYS[1]) return -1 end
if ttl > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1 end
return 0
"""
TOKEN_BYTES = 16  # the lease's random value: 128 bits, written as 32 hex digits


class Lease:
    """One broker's lease on one token's fetch. Event loop only."""

    def __init__(self, link: RedisLink, name: str, *, lock_timeout: float, log: Any) -> None:
        # Imported here, as the client is (see link.make_client): only [shared] loads redis-py.
        from redis.asyncio.lock import Lock

        self.name = name + LEASE_SUFFIX
        self._link = link
        self._log = log
        self.lock_timeout = lock_timeout
        # thread_local=False: one event loop, and the lease is handed to the renewal task.
        self._lock = Lock(link.redis, self.name, timeout=lock_timeout, thread_local=False)

    async def take(self) -> bool:
        """One try (`SET NX PX`, a fresh random value): True when it is ours now."""
        value = secrets.token_hex(TOKEN_BYTES)
        acquire = self._lock.acquire(blocking=False, token=value)
        return bool(await self._link.call(acquire, self.name))

    async def bound(self) -> bool:
        """Bound the life of a lease another holds (see BOUND_LEASE): a row written by hand
        with no expiry (or a huge one) must not make every cold fetch of this key wait on it
        forever. True when it had no expiry and is gone now (take it at once)."""
        ms = max(1, int(self.lock_timeout * 1000))
        bound = self._link.script(BOUND_LEASE)
        return bool(await self._link.call(bound(keys=[self.name], args=[ms]), self.name) == -1)

    async def renew(self) -> bool:
        """Reset its expiry to lock_timeout if it is still ours; False when it is not."""
        return bool(await self._link.call(self._if_ours(self._lock.reacquire), self.name))

    async def release(self) -> bool:
        """Delete it if it is still ours; False when it is not (lapsed, taken by another)."""
        return bool(await self._link.call(self._if_ours(self._lock.release), self.name))

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """While the body runs (the fetch), the lease is renewed every third of lock_timeout: a
        fixed lease that ran out mid-fetch would let a second broker in. However the body ends
        (a token, an error, a cancellation), the lease is released, so the next broker of the
        fleet can try at once; a Redis gone meanwhile lets it lapse on its own."""
        renewer = asyncio.get_running_loop().create_task(self._renew_while_held())
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(Unavailable):
                await self.release()

    async def _renew_while_held(self) -> None:
        unbudgeted()  # off the caller's path: the fetch's budget is not spent on renewals
        while True:
            await asyncio.sleep(self.lock_timeout / 3)
            try:
                kept = await self.renew()
            except Unavailable:
                return
            if not kept:
                self._log.warning("shared_lease_lost", note="another broker may fetch too")
                return

    @staticmethod
    async def _if_ours(op: Any) -> bool:
        """Run a compare-and-act of the Lock: False, not a Redis failure, when the lease is not
        ours (any more): Redis holds another value or none (LockNotOwnedError), or the Lock
        already let it go (LockError: a release clears its value). Only lock.py raises these,
        never the client."""
        from redis.exceptions import LockError

        try:
            await op()
        except LockError:
            return False
        return True
