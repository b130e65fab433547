"""The cache of one profile's customer-tenant tokens: one `Entry` per (tenant, scope), each
with its own expiry, single flight and refresh ahead (while used: an entry nobody asked for in
TENANT_IDLE_AFTER seconds lapses). Lookups are two dict lookups, partitioned by tenant; the
total is bounded by `max_customer_tokens`, least recently used first (expired ones before).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from broker.config.settings import ProfileSettings
from broker.core.cache import Entry, Fetch
from broker.core.cache.shared import SharedCache, shared_key
from broker.core.cache.singleflight import SingleFlight
from broker.core.cache.timers import Timers
from broker.core.credentials import Credential
from broker.core.sources import policy_for
from broker.core.tenants import views
from broker.core.tenants.fetch import AfterLanding, EntryFetch, Fetcher
from broker.core.tenants.limiter import ColdFetchRate, FifoLimiter
from broker.core.tenants.memory import FailureMemory, TenantState
from broker.core.tokens import Kind, Token
from broker.core.tokens.clock import Clock
from broker.core.upstream import Upstream

KIND = "tenant"  # the `kind` of tenant entries: a fixed metrics label, never the tenant id
# An entry nobody asked for in this long is not refreshed ahead any more; it lapses.
TENANT_IDLE_AFTER = 900.0
# Eviction looks this far into the least recently used end for an expired entry.
EVICTION_SCAN = 32


class TenantCache:
    """The (tenant, scope) entries of one profile: made on first use, looked up in O(1),
    evicted beyond the bound. Their fetch (`Fetcher`) holds the failure memory and the fan-out
    limit; `views` says what operators see."""

    def __init__(
        self,
        profile: ProfileSettings,
        credential: Credential,
        upstream: Upstream,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
        rand: Callable[[], float],
        shared: SharedCache | None = None,
    ) -> None:
        self.profile = profile
        self._clock = clock
        self._log = log.bind(profile=profile.name, kind=KIND)
        self._metrics = metrics
        self._rand = rand
        self._policy = replace(policy_for(profile), warm=False, idle_after=TENANT_IDLE_AFTER)
        self._shared = shared  # a SharedCache: the fleet's Redis in front of Azure AD
        self._any = profile.customer_tenants == ("*",)
        self._allowed = frozenset(profile.customer_tenants)
        self._scopes = frozenset(profile.customer_scopes)
        # The configured scope strings: an entry keeps these, not a copy from each request.
        self._scope_names = {scope: scope for scope in profile.customer_scopes}
        self.tenants: dict[str, TenantState] = {}
        # The tenants with no entry left, in the order they were left so: the first to forget.
        self._idle: OrderedDict[str, None] = OrderedDict()
        # Every entry, least recently used first, with its fetch (which knows its tenant and
        # scope): keyed by the entry itself, no (tenant, scope) tuple per entry.
        self._lru: OrderedDict[Entry, EntryFetch] = OrderedDict()
        # Shared by the entries: one timer heap, one table of flights (keyed by entry).
        self._timers = Timers(clock)
        self._flights: SingleFlight[Entry, Token] = SingleFlight()
        self.limiter = FifoLimiter(profile.upstream_concurrency)
        self.rate = ColdFetchRate(profile.customer_fetch_rate, profile.customer_fetch_burst, clock)
        self.memory = FailureMemory(profile, clock=clock, log=self._log)
        self._fetcher = Fetcher(profile, credential, upstream, self.memory, self.limiter)
        self.evicted = 0
        # Fetches of invalidated entries still in flight, by (tenant, scope): the entry made
        # again starts its own when that one lands (single flight across an invalidation).
        self._landing: dict[tuple[str, str], asyncio.Task[Token]] = {}

    # -- questions callers ask first ----------------------------------------------------------

    @property
    def default_scope(self) -> str:
        return self.profile.customer_scopes[0]

    def allows_tenant(self, tenant: str) -> bool:
        return self._any or tenant in self._allowed

    def allows_scope(self, scope: str) -> bool:
        return scope in self._scopes

    def __len__(self) -> int:
        """Entries, with or without a token (bounded by max_customer_tokens)."""
        return len(self._lru)

    def tokens(self) -> int:
        """Entries holding a token (O(n): for status, not the hot path)."""
        return sum(1 for e in self._lru if e.token is not None)

    # -- entries ---------------------------------------------------------------------------

    def lookup(self, tenant: str, scope: str) -> Entry | None:
        """The entry if it exists, marked as recently used. O(1)."""
        state = self.tenants.get(tenant)
        entry = state.entries.get(scope) if state is not None else None
        if entry is not None:
            self._lru.move_to_end(entry)
        return entry

    def entry(self, tenant: str, scope: str) -> Entry:
        """The entry for (tenant, scope), made (and room made for it) if new: a new entry that
        would go to Azure AD is a cold fetch, at most `customer_fetch_rate` a second (else
        `FetchRateExceeded`, 429, and nothing is made)."""
        entry = self.lookup(tenant, scope)
        if entry is not None:
            if entry.last_error is not None and self.memory.lifted(
                self.tenants[tenant], entry.last_error
            ):
                entry.retry_at = 0.0  # what held it back is lifted: the next caller goes up
            return entry
        state = self.tenants.get(tenant)
        now = self._clock.monotonic()
        if state is None or not self.memory.holding(state, now):
            wait = self.rate.take()
            if wait:
                self._metrics.customer_fetch_refused.labels(self.profile.name).inc()
                raise self.rate.refused(wait)
        while len(self._lru) >= self.profile.max_customer_tokens:
            self._evict_one()
        state = self.tenants.get(tenant)
        if state is None:
            self._bound_tenants()
            state = self.tenants[tenant] = TenantState(tenant)
        tenant = state.name  # one copy of the name, however many scopes
        scope = self._scope_names.get(scope, scope)
        own = EntryFetch(self._fetcher, state, scope, self._log)
        entry = Entry(
            self.profile.name,
            KIND,
            self._fetch(own, tenant, scope),
            self._policy,
            clock=self._clock,
            log=own,
            metrics=self._metrics,
            rand=self._rand,
            timers=self._timers,
            flights=self._flights,
        )
        state.entries[scope] = entry
        self._idle.pop(tenant, None)
        self._lru[entry] = own
        return entry

    async def get(
        self, tenant: str, scope: str, min_remaining: float | None = None
    ) -> tuple[Token, bool, Entry]:
        entry = self.entry(tenant, scope)
        token, hit = await entry.get(min_remaining)
        return token, hit, entry

    def _fetch(self, own: EntryFetch, tenant: str, scope: str) -> Fetch:
        """The entry's fetch: the fleet's shared cache (when [shared] is on) in front of its
        own (the failure memory and fan-out limit, in front of Azure AD)."""
        fetch: Fetch = own
        if self._shared is not None and self._shared.enabled:
            credential = self._shared.credential_of(self._fetcher.credential)
            key = shared_key(
                self.profile, Kind.AAD, credential=credential, tenant=tenant, scope=scope
            )
            fetch = self._shared.wrap(fetch, key, self._policy)
        earlier = self._landing.get((tenant, scope))
        return fetch if earlier is None else AfterLanding(fetch, earlier)

    # -- bounds -----------------------------------------------------------------------------

    def _evict_one(self) -> None:
        """Expired (or empty) entries first among the least recently used, else the least
        recently used one; an entry with a fetch in flight is left to land."""
        now = self._clock.monotonic()
        fallback = None
        for i, entry in enumerate(self._lru):
            if i >= EVICTION_SCAN:
                break
            if entry.flight is not None:
                continue
            if entry.token is None or entry.token.expires_mono <= now:
                fallback = entry
                break
            if fallback is None:
                fallback = entry
        self._drop(fallback or next(iter(self._lru)))
        self.evicted += 1

    def _drop(self, entry: Entry) -> None:
        own = self._lru.pop(entry)
        name = own.state.name
        state = self.tenants.get(name)  # None: the tenant was invalidated
        if state is not None:
            state.entries.pop(own.scope, None)
            if not state.entries:
                self._idle[name] = None
        entry.retire()

    def _bound_tenants(self) -> None:
        """Records are bounded by max_customer_tokens: beyond it, the tenant left with nothing
        cached the longest ago is forgotten, with its failure memory (O(1)). A tenant with an
        entry is never forgotten here: there are at most max_customer_tokens of those."""
        if len(self.tenants) >= self.profile.max_customer_tokens and self._idle:
            name, _ = self._idle.popitem(last=False)
            del self.tenants[name]

    def invalidate(self, tenant: str) -> int:
        """Drop the tenant's tokens and its failure memory (consent just changed)."""
        state = self.tenants.pop(tenant, None)
        if state is None:
            return 0
        self._idle.pop(tenant, None)
        state.forgotten = True
        self.memory.forget(tenant)
        dropped = len(state.entries)
        for scope, entry in list(state.entries.items()):
            flight = entry.flight
            if flight is not None:
                self._land_later((tenant, scope), flight)
            self._drop(entry)
        self._log.info("tenant_invalidated", tenant=tenant, tokens=dropped)
        return dropped

    def _land_later(self, key: tuple[str, str], flight: asyncio.Task[Token]) -> None:
        self._landing[key] = flight

        def landed(_: object) -> None:
            if self._landing.get(key) is flight:
                del self._landing[key]

        flight.add_done_callback(landed)

    def retire(self) -> None:
        for entry in self._lru:
            entry.retire()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self._lru))

    def iter_entries(self) -> Iterator[Entry]:
        return iter(self._lru)

    # -- status (never a token): see views.py -----------------------------------------------

    def page(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Tenants in name order after `after`, at most `limit`; and the cursor for the next."""
        return views.page(self.tenants, self.memory, self._clock.monotonic(), after, limit)

    def states(self) -> dict[str, int]:
        return views.states(self.tenants, self.memory, self._clock.monotonic())

    def profile_block(self) -> dict[str, Any] | None:
        return views.profile_block(self.memory, self._clock.monotonic())
