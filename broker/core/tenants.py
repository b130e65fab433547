"""Customer tenants (GDAP, Secure Application Model): one profile's credential buys Azure AD
tokens for every customer tenant and resource its consent covers.

One cache `Entry` per (tenant, scope), with its own expiry, single flight and refresh ahead
(while used: an entry nobody asked for in TENANT_IDLE_AFTER seconds lapses). Lookups are two
dict lookups, partitioned by tenant; the total is bounded by `max_customer_tokens`.

Azure AD's refusals are classified by their AADSTS code. Each class has an error code, a
cool-down and a reach: one (tenant, scope) entry, the whole tenant, or the whole profile (an
invalid refresh token, throttling). A remembered failure answers callers without an upstream
call until its cool-down ends; `invalidate(tenant)` forgets a tenant at once.

Cold fan-out is bounded: at most `upstream_concurrency` Azure AD calls in flight per profile,
the rest queue in arrival order (`FifoLimiter`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from broker.config.errors import UpstreamError
from broker.config.settings import ProfileSettings
from broker.core.cache import Entry, Fetch
from broker.core.clock import Clock
from broker.core.credentials import Credential
from broker.core.sources import policy_for
from broker.core.tokens import Token
from broker.core.upstream import Answer, RefreshIds, Upstream

KIND = "tenant"  # the `kind` of tenant entries: a fixed metrics label, never the tenant id
# An entry nobody asked for in this long is not refreshed ahead any more; it lapses.
TENANT_IDLE_AFTER = 900.0
# Eviction looks this far into the least recently used end for an expired entry.
EVICTION_SCAN = 32
# Throttled without a Retry-After: wait this long; a Retry-After is honoured up to the cap.
THROTTLE_DEFAULT = 60.0
THROTTLE_CAP = 600.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A class of Azure AD refusal: the broker's error code (and tenant state), how long to
    remember it, how far it reaches, and the status callers get."""

    state: str
    cooldown: float
    reach: str  # entry | tenant | profile
    status: int = 502
    retryable: bool = False


CONSENT_REQUIRED = Refusal("consent_required", 300.0, "entry")
INTERACTION_REQUIRED = Refusal("interaction_required", 600.0, "tenant")
REFRESH_TOKEN_INVALID = Refusal("refresh_token_invalid", 600.0, "profile")
TENANT_NOT_FOUND = Refusal("tenant_not_found", 900.0, "tenant")
THROTTLED = Refusal("throttled", THROTTLE_DEFAULT, "profile", status=503, retryable=True)

AADSTS: dict[int, Refusal] = {
    65001: CONSENT_REQUIRED,  # the user or administrator has not consented
    650051: CONSENT_REQUIRED,  # service principal present, consent incomplete
    50076: INTERACTION_REQUIRED,  # MFA required
    50079: INTERACTION_REQUIRED,  # MFA enrolment required
    50078: INTERACTION_REQUIRED,  # presented MFA expired
    70043: INTERACTION_REQUIRED,  # sign-in frequency (conditional access)
    700082: REFRESH_TOKEN_INVALID,  # expired due to inactivity
    50173: REFRESH_TOKEN_INVALID,  # revoked (password change or reset)
    70008: REFRESH_TOKEN_INVALID,  # expired
    700084: REFRESH_TOKEN_INVALID,  # single-page-app refresh token lifetime over
    90002: TENANT_NOT_FOUND,  # tenant not found
    90072: TENANT_NOT_FOUND,  # the user does not exist in that tenant (no relationship)
    50196: THROTTLED,  # request loop / throttled
}
_AADSTS_TEXT = re.compile(r"AADSTS(\d{4,7})")


def aadsts_codes(body: bytes) -> list[int]:
    """The AADSTS codes of an Azure AD error answer: `error_codes`, else the description's."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    codes = data.get("error_codes")
    if isinstance(codes, list):
        found = [c for c in codes[:8] if isinstance(c, int) and not isinstance(c, bool)]
        if found:
            return found
    text = data.get("error_description")
    if isinstance(text, str):
        return [int(m) for m in _AADSTS_TEXT.findall(text[:2000])[:8]]
    return []


def classify(status: int, codes: list[int]) -> Refusal | None:
    if status == 429:
        return THROTTLED
    for code in codes:
        if code in AADSTS:
            return AADSTS[code]
    return None


class TenantRefused(UpstreamError):
    """An Azure AD refusal of a known class; `code` is the class, `aadsts` Azure AD's code."""

    def __init__(self, refusal: Refusal, message: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.refusal = refusal
        self.code = refusal.state
        self.status = refusal.status
        self.retryable = refusal.retryable

    def again(self, retry_after: float) -> TenantRefused:
        """The remembered refusal, told again with the time still left."""
        return TenantRefused(
            self.refusal,
            self.message,
            aadsts=self.aadsts,
            endpoint=self.endpoint,
            upstream_status=self.upstream_status,
            retry_after=max(1.0, retry_after),
            correlation_id=self.correlation_id,
            trace_id=self.trace_id,
        )


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


@dataclass(slots=True)
class _Block:
    """A remembered refusal that reaches a whole tenant or the whole profile."""

    error: TenantRefused
    until: float  # monotonic
    stamp: tuple[int, int, int] | None = None  # the refresh-token file when it happened


class TenantState:
    """One customer tenant: its entries by scope, and what went wrong there last."""

    __slots__ = ("block", "entries", "failures", "invalidated_at", "last_error", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: dict[str, Entry] = {}
        self.block: _Block | None = None
        self.last_error: UpstreamError | None = None
        self.failures = 0
        self.invalidated_at = -1e9


def _file_stamp(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def fetch_tenant_token(
    profile: ProfileSettings,
    credential: Credential,
    upstream: Upstream,
    tenant: str,
    scope: str,
    ids: RefreshIds,
) -> Token:
    """THE place a customer-tenant token is fetched: the profile's grant at
    `{authority}/{tenant}/oauth2/v2.0/token` for `scope`. Raises `TenantRefused` for a
    classified refusal. (With [shared], `TenantCache` puts the fleet's cache in front of it,
    keyed (client_id, tenant, scope): see `shared_key`.)"""
    url = profile.customer_token_url(tenant)
    await credential.before(upstream)
    form = credential.form(upstream, url, scope)
    token, body = await upstream.azure_ad_token(
        url,
        form,
        timeout=profile.upstream_timeout,
        ids=ids,
        refused=lambda answer: refusal_error(upstream, answer, ids),
    )
    await credential.answered(upstream, body, ids, coalesce=True)
    return token


class _Fetch:
    """One entry's fetch, small (an entry may be one of 50,000): the profile's and the tenant's
    remembered refusals, then the fan-out limit, then `fetch_tenant_token`."""

    __slots__ = ("cache", "scope", "state")

    def __init__(self, cache: TenantCache, state: TenantState, scope: str) -> None:
        self.cache, self.state, self.scope = cache, state, scope

    async def __call__(self, ids: RefreshIds) -> Token:
        cache, state, scope = self.cache, self.state, self.scope
        cache._check(state)
        async with cache.limiter:
            cache._check(state)  # a refusal may have landed while this one queued
            try:
                token = await fetch_tenant_token(
                    cache.profile, cache._credential, cache._upstream, state.name, scope, ids
                )
            except UpstreamError as e:
                cache._remember(state, e)
                raise
        others = (e for s, e in state.entries.items() if s != scope)
        if state.block is None and not any(e.last_error is not None for e in others):
            state.last_error, state.failures = None, 0
        return token


class _EntryLog:
    """An entry's logger without a bound copy per entry: tenant and scope are added when a
    line is logged. Profile and kind are bound once, on the cache's logger, so `bind` (which
    `Entry` calls with exactly those) returns this same object."""

    __slots__ = ("_log", "_scope", "_tenant")

    def __init__(self, log: Any, tenant: str, scope: str) -> None:
        self._log, self._tenant, self._scope = log, tenant, scope

    def bind(self, **_already_bound: Any) -> _EntryLog:
        return self

    def info(self, event: str, **kw: Any) -> Any:
        return self._log.info(event, tenant=self._tenant, scope=self._scope, **kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._log.warning(event, tenant=self._tenant, scope=self._scope, **kw)

    def exception(self, event: str, **kw: Any) -> Any:
        return self._log.exception(event, tenant=self._tenant, scope=self._scope, **kw)


def shared_key(profile: ProfileSettings, tenant: str, scope: str) -> tuple[str, str, str]:
    """What a customer-tenant token is shared under in [shared]: (client id, tenant, scope);
    a user's token (refresh_token grant) is keyed apart from the app's, as in sources.py."""
    what = f"user {scope}" if profile.credential == "refresh_token" else scope
    return (profile.client_id, tenant, what)


def refusal_error(upstream: Upstream, answer: Answer, ids: RefreshIds) -> UpstreamError:
    """Azure AD's non-200 answer as the error callers see: classified when its AADSTS code (or
    a 429) says which kind of refusal it is."""
    error = upstream.error("aad", answer, ids.correlation_id)
    codes = aadsts_codes(answer.body)
    refusal = classify(answer.status, codes)
    if refusal is None:
        return error
    cooldown = refusal.cooldown
    if refusal is THROTTLED:
        cooldown = min(max(error.retry_after or THROTTLE_DEFAULT, 1.0), THROTTLE_CAP)
    aadsts = next((c for c in codes if c in AADSTS), error.aadsts)
    return TenantRefused(
        refusal,
        error.message,
        aadsts=aadsts,
        endpoint="aad",
        upstream_status=answer.status,
        retry_after=cooldown,
        correlation_id=error.correlation_id,
        trace_id=error.trace_id,
    )


class TenantCache:
    """The (tenant, scope) entries of one profile, their failure memory and fan-out limit."""

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
        shared: Any = None,
    ) -> None:
        self.profile = profile
        self._credential = credential
        self._upstream = upstream
        self._clock = clock
        self._log = log.bind(profile=profile.name, kind=KIND)
        self._metrics = metrics
        self._rand = rand
        self._policy = replace(policy_for(profile), warm=False, idle_after=TENANT_IDLE_AFTER)
        self._shared = shared  # a SharedCache: the fleet's Redis in front of Azure AD
        self._any = profile.customer_tenants == ("*",)
        self._allowed = frozenset(profile.customer_tenants)
        self._scopes = frozenset(profile.customer_scopes)
        self.tenants: dict[str, TenantState] = {}
        self._lru: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.limiter = FifoLimiter(profile.upstream_concurrency)
        self.block: _Block | None = None  # profile-wide: refresh token invalid, throttled
        self.evicted = 0

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
        return sum(1 for e in self._lru.values() if e.token is not None)

    # -- entries ---------------------------------------------------------------------------

    def lookup(self, tenant: str, scope: str) -> Entry | None:
        """The entry if it exists, marked as recently used. O(1)."""
        state = self.tenants.get(tenant)
        entry = state.entries.get(scope) if state is not None else None
        if entry is not None:
            self._lru.move_to_end((tenant, scope))
        return entry

    def entry(self, tenant: str, scope: str) -> Entry:
        """The entry for (tenant, scope), made (and room made for it) if new."""
        entry = self.lookup(tenant, scope)
        if entry is not None:
            return entry
        while len(self._lru) >= self.profile.max_customer_tokens:
            self._evict_one()
        state = self.tenants.get(tenant)
        if state is None:
            self._bound_tenants()
            state = self.tenants[tenant] = TenantState(tenant)
        entry = Entry(
            self.profile.name,
            KIND,
            self._fetch(state, tenant, scope),
            self._policy,
            clock=self._clock,
            log=_EntryLog(self._log, tenant, scope),
            metrics=self._metrics,
            rand=self._rand,
        )
        state.entries[scope] = entry
        self._lru[(tenant, scope)] = entry
        return entry

    async def get(
        self, tenant: str, scope: str, min_remaining: float | None = None
    ) -> tuple[Token, bool, Entry]:
        entry = self.entry(tenant, scope)
        token, hit = await entry.get(min_remaining)
        return token, hit, entry

    def _evict_one(self) -> None:
        """Expired (or empty) entries first among the least recently used, else the least
        recently used one; an entry with a fetch in flight is left to land."""
        now = self._clock.monotonic()
        fallback = None
        for i, (key, entry) in enumerate(self._lru.items()):
            if i >= EVICTION_SCAN:
                break
            if entry.flight is not None:
                continue
            if entry.token is None or entry.token.expires_mono <= now:
                fallback = key
                break
            if fallback is None:
                fallback = key
        self._drop(fallback or next(iter(self._lru)))
        self.evicted += 1

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._lru.pop(key)
        state = self.tenants.get(key[0])
        if state is not None:
            state.entries.pop(key[1], None)
        entry.retire()

    def _bound_tenants(self) -> None:
        """Tenants with nothing cached are forgotten oldest first beyond the bound."""
        if len(self.tenants) < self.profile.max_customer_tokens:
            return
        for i, (name, state) in enumerate(self.tenants.items()):
            if i >= EVICTION_SCAN:
                break
            if not state.entries:
                del self.tenants[name]
                return

    def invalidate(self, tenant: str) -> int:
        """Drop the tenant's tokens and its failure memory (consent just changed)."""
        state = self.tenants.pop(tenant, None)
        if state is None:
            return 0
        dropped = len(state.entries)
        for scope in list(state.entries):
            self._drop((tenant, scope))
        self._log.info("tenant_invalidated", tenant=tenant, tokens=dropped)
        return dropped

    def retire(self) -> None:
        for entry in self._lru.values():
            entry.retire()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self._lru.values()))

    # -- failure memory and the fan-out limit ---------------------------------------------------

    def _fetch(self, state: TenantState, tenant: str, scope: str) -> Fetch:
        """The entry's fetch: the fleet's shared cache (when [shared] is on) in front of the
        failure memory and fan-out limit, in front of Azure AD."""
        fetch = _Fetch(self, state, scope)
        if self._shared is None or not self._shared.enabled:
            return fetch
        return self._shared.wrap(fetch, shared_key(self.profile, tenant, scope), self._policy)

    def _check(self, state: TenantState) -> None:
        now = self._clock.monotonic()
        for block in (self.block, state.block):
            if block is None or now >= block.until:
                continue
            if block.stamp is not None and block.stamp != _file_stamp(
                self.profile.refresh_token_file
            ):
                self.block = None  # a new refresh token was placed: try it
                continue
            raise block.error.again(block.until - now)

    def _remember(self, state: TenantState, error: UpstreamError) -> None:
        state.last_error = error
        state.failures += 1
        if not isinstance(error, TenantRefused):
            return
        until = self._clock.monotonic() + (error.retry_after or error.refusal.cooldown)
        reach = error.refusal.reach
        if reach == "tenant":
            state.block = _Block(error, until)
        elif reach == "profile":
            stamp = (
                _file_stamp(self.profile.refresh_token_file)
                if error.refusal is REFRESH_TOKEN_INVALID
                else None
            )
            self.block = _Block(error, until, stamp)
        self._log.warning(
            "customer_tenant_refused",
            tenant=state.name,
            state=error.code,
            aadsts=error.aadsts,
            reach=reach,
            cooldown_s=round(until - self._clock.monotonic(), 1),
        )

    # -- status (never a token) ------------------------------------------------------------------

    def tenant_state(self, state: TenantState, now: float) -> str:
        if self.block is not None and now < self.block.until:
            return self.block.error.code
        if state.block is not None and now < state.block.until:
            return state.block.error.code
        servable = failing = 0
        worst: str | None = None
        for entry in state.entries.values():
            token = entry.token
            if token is not None and token.servable(now, entry.policy.min_remaining):
                servable += 1
            elif entry.last_error is not None:
                failing += 1
                worst = worst or entry.last_error.code
        if failing:
            return worst if worst in _STATES else "failing"
        return "ok" if servable else "idle"

    def describe(self, state: TenantState, now: float) -> dict[str, Any]:
        error = state.last_error
        scopes = {}
        next_attempt: float | None = None
        for scope, entry in state.entries.items():
            s = entry.status()
            scopes[scope] = {"state": s.state, "expires_in": s.expires_in}
            if s.next_attempt_in is not None and s.last_error is not None:
                next_attempt = min(next_attempt or 1e12, s.next_attempt_in)
        for block in (self.block, state.block):
            if block is not None and now < block.until:
                next_attempt = max(next_attempt or 0.0, round(block.until - now, 1))
        return {
            "tenant": state.name,
            "state": self.tenant_state(state, now),
            "tokens": sum(1 for e in state.entries.values() if e.token is not None),
            "scopes": scopes,
            "failures_in_row": state.failures,
            "last_error": None if error is None else error_detail(error),
            "next_attempt_in": next_attempt,
        }

    def page(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Tenants in name order after `after`, at most `limit`; and the cursor for the next."""
        now = self._clock.monotonic()
        names = sorted(n for n in self.tenants if after is None or n > after)
        rows = [self.describe(self.tenants[n], now) for n in names[:limit]]
        more = names[limit - 1] if len(names) > limit else None
        return rows, more

    def states(self) -> dict[str, int]:
        now = self._clock.monotonic()
        counts: dict[str, int] = {}
        for state in self.tenants.values():
            name = self.tenant_state(state, now)
            counts[name] = counts.get(name, 0) + 1
        return counts

    def profile_block(self) -> dict[str, Any] | None:
        now = self._clock.monotonic()
        if self.block is None or now >= self.block.until:
            return None
        return {
            "state": self.block.error.code,
            "retry_in": round(self.block.until - now, 1),
            "last_error": error_detail(self.block.error),
        }

    def iter_entries(self) -> Iterator[Entry]:
        return iter(self._lru.values())


_STATES = frozenset(
    r.state
    for r in (CONSENT_REQUIRED, INTERACTION_REQUIRED, REFRESH_TOKEN_INVALID, TENANT_NOT_FOUND)
) | {THROTTLED.state}


def error_detail(error: UpstreamError) -> dict[str, Any]:
    return {
        "code": error.code,
        "aadsts": error.aadsts,
        "message": error.message,
        "upstream_status": error.upstream_status,
        "correlation_id": error.correlation_id,
    }
