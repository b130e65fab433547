"""`SharedCache`: the Redis half of the two-level cache. One verb, `wrap(fetch, key, policy)`:
the wrapped fetch
    1. reads Redis; a token with life left before its refresh point is returned, no upstream call;
    2. else takes the lease, reads again, fetches upstream while the lease is renewed, writes the
       token (TTL = remaining life) and releases the lease (on failure and cancellation too);
    3. or, when another broker holds the lease, polls Redis for its result until the lease is
       free (then takes it) or a third of `upstream_timeout` has passed on the injected clock
       (then fetches on its own, so its caller, who waits `upstream_timeout`, still gets one).
Redis down, slow, refusing or answering nonsense at any step (`Unavailable`, decided by the
link): the fetch goes upstream alone. A fetch's Redis calls (its nested fetches' included)
spend at most SHARED_BUDGET_SHARE of upstream_timeout in all; past it, it fetches alone. A
Redis problem never becomes a caller's error while upstream works.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Protocol

from broker.config.settings import SharedSettings
from broker.core.cache import Fetch, Policy
from broker.core.cache.shared.lease import Lease
from broker.core.cache.shared.link import RedisLink, Unavailable, budgeted, where
from broker.core.cache.shared.sealer import Sealer
from broker.core.cache.shared.store import TokenStore
from broker.core.tokens import Token
from broker.core.tokens.clock import Clock
from broker.core.upstream import RefreshIds

# Waiting on another broker's fetch: poll Redis from every 10 ms up to every 100 ms.
POLL_FIRST, POLL_MAX = 0.01, 0.1
# Waiting on another broker's lease: at most this share of upstream_timeout, then fetch alone.
LEASE_WAIT_SHARE = 1 / 3
# Redis calls of one fetch (its nested fetches included): at most this share of
# upstream_timeout in all, then it fetches alone (and writes only if budget is left).
SHARED_BUDGET_SHARE = 1 / 4


class Identified(Protocol):
    """A credential, as far as shared keys care: its kind and what identifies it."""

    @property
    def kind(self) -> str: ...

    def identity(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SharedStatus:
    state: str  # connected | degraded | off
    redis_url: str | None
    last_error: str | None
    hits: int
    misses: int
    lease_waits: int
    errors: int


class SharedCache:
    """The fleet's cache: the link, the sealer, the store and leases, put together. `[shared]`
    absent: `wrap()` is the identity and nothing here touches Redis. Runs on the event loop."""

    def __init__(
        self,
        settings: SharedSettings | None,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._log = log.bind(component="shared")
        self._metrics = metrics
        self._counts = {"hit": 0, "miss": 0, "lease_wait": 0, "error": 0}
        metrics.shared_state.set(0 if settings is None else 1)
        self._link: RedisLink | None = None
        self._sealer: Sealer | None = None
        self._store: TokenStore | None = None
        if settings is not None:
            link = RedisLink(settings, log=self._log, metrics=metrics, count=self._count)
            sealer = Sealer(bytes.fromhex(settings.key.reveal()), settings.prefix)
            self._link, self._sealer = link, sealer
            self._store = TokenStore(link, sealer, clock=clock, log=self._log, count=self._count)

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    @property
    def state(self) -> str:
        return "off" if self._link is None else self._link.state

    @property
    def store(self) -> TokenStore:
        assert self._store is not None, "[shared] is configured"
        return self._store

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client (lazily connected: a Redis down at start-up only means degraded)."""
        if self._link is not None:
            await self._link.start()

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()

    def status(self) -> SharedStatus:
        link, c = self._link, self._counts
        return SharedStatus(
            state=self.state,
            redis_url=where(link.settings.redis_url) if link else None,
            last_error=link.last_error if link else None,
            hits=c["hit"],
            misses=c["miss"],
            lease_waits=c["lease_wait"],
            errors=c["error"],
        )

    # -- the published format (see sealer.py) --------------------------------------------------

    def name(self, client_id: str, tenant: str, *what: str) -> str:
        """The Redis key of one token: the prefix and an HMAC, never the ids themselves."""
        assert self._sealer is not None
        return self._sealer.name(client_id, tenant, *what)

    def credential_id(self, kind: str, identity: str) -> str:
        """What names a credential in shared keys (an HMAC, see `Sealer.credential_id`)."""
        assert self._sealer is not None
        return self._sealer.credential_id(kind, identity)

    def credential_of(self, credential: Identified) -> str:
        """`credential_id` of a profile's credential."""
        return self.credential_id(credential.kind, credential.identity())

    def seal(self, name: str, plain: bytes) -> bytes:
        assert self._sealer is not None
        return self._sealer.seal(name, plain)

    def open(self, name: str, sealed: bytes) -> bytes | None:
        """The plain bytes, or None (logged once per key) for another key's or a tampered value."""
        return self.store.open(name, sealed)

    # -- rotated refresh tokens: newest wins (see store.py) -------------------------------------

    async def get_versioned(self, name: str) -> tuple[int, str] | None:
        """(version, value) of a shared secret such as a rotated refresh token, or None."""
        return None if self._store is None else await self._store.get_versioned(name)

    async def put_versioned(self, name: str, version: int, value: str, ttl: float) -> bool:
        """Store `value` as `version` unless Redis holds that version or a newer one already."""
        if self._store is None:
            return False
        return await self._store.put_versioned(name, version, value, ttl)

    # -- the wrapper --------------------------------------------------------------------------

    def wrap(self, fetch: Fetch, key: tuple[str, ...], policy: Policy) -> Fetch:
        """`fetch` behind the fleet's cache; `fetch` itself when there is no [shared]."""
        if self.settings is None:
            return fetch
        name = self.name(*key)

        async def shared_fetch(ids: RefreshIds) -> Token:
            return await self._fetch(fetch, name, policy, ids)

        return shared_fetch

    def lease(self, name: str) -> Lease:
        """The lease on the fetch of the token stored under `name`."""
        assert self._link is not None and self.settings is not None
        return Lease(self._link, name, lock_timeout=self.settings.lock_timeout, log=self._log)

    async def _fetch(self, fetch: Fetch, name: str, policy: Policy, ids: RefreshIds) -> Token:
        if self.state != "connected":
            return await fetch(ids)
        with budgeted(policy.wait_timeout * SHARED_BUDGET_SHARE):
            return await self._fetch_budgeted(fetch, name, policy, ids)

    async def _fetch_budgeted(
        self, fetch: Fetch, name: str, policy: Policy, ids: RefreshIds
    ) -> Token:
        store = self.store
        try:
            token = await store.read(name, policy)
            if token is not None and not _refused(token, ids):
                self._count("hit")
                return token
            self._count("miss")
            lease = await self._wait_for_lease(name, policy)
            if isinstance(lease, Token):
                if not _refused(lease, ids):
                    self._count("hit")
                    return lease  # another broker's fetch landed while we waited
                lease = None  # the refused token, still stored: fetch on our own, write it
        except Unavailable:
            return await fetch(ids)
        if lease is None:  # waited long enough on another broker: fetch on our own
            token = await fetch(ids)
            await store.write_quietly(name, token)
            return token
        async with lease.held():
            token = await fetch(ids)
            await store.write_quietly(name, token)
        return token

    async def _wait_for_lease(self, name: str, policy: Policy) -> Lease | Token | None:
        """Our lease once we hold it; a token if another broker's landed meanwhile; None when a
        third of `wait_timeout` passed (by the injected clock) with the lease held elsewhere:
        the caller waits `wait_timeout` in all, and a partner fetch may wait twice (its own
        lease, then the Azure AD token's) before fetching alone."""
        store = self.store
        lease = self.lease(name)
        budget = policy.wait_timeout * LEASE_WAIT_SHARE
        deadline = self._clock.monotonic() + budget
        delay = POLL_FIRST
        waited = bounded = False
        while True:
            if await lease.take():
                token = await store.read(name, policy)  # landed between our read and the lease?
                if token is not None:
                    await lease.release()
                    return token
                return lease
            if not bounded:  # once: a lease with no expiry or a huge one is bounded
                bounded = True
                if await lease.bound():
                    continue  # it had no expiry: gone, so take it now
            if not waited:
                waited = True
                self._count("lease_wait")
            if self._clock.monotonic() >= deadline:
                self._log.warning("shared_lease_wait_timeout", waited_s=budget)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)
            token = await store.read(name, policy)
            if token is not None:
                return token

    def _count(self, result: str) -> None:
        if result in self._counts:
            self._counts[result] += 1
        self._metrics.shared.labels(result).inc()


def _refused(token: Token, ids: RefreshIds) -> bool:
    """Whether `token` is the one this refresh replaces (a caller saw it refused)."""
    return ids.refused is not None and hmac.compare_digest(
        hashlib.sha256(token.value.encode()).hexdigest(), ids.refused
    )
