"""Giving a caller a token: the one place that decides, counts and records it.

`Desk.serve(caller, profile, target)` looks the profile up in the snapshot in force, checks
that the caller may use it, takes the token from the cache (a hit: no await), and otherwise
waits for the refresh. **After every wait it reads the snapshot in force again and checks
again**: a reload may have removed the profile (404), restricted it (403) or rebuilt it (then
the token of the configuration that went is not handed out; the caller is served from the new
one). Then it counts the hit or miss and writes the audit line. The HTTP handlers only parse
the request, call it and render what it returns or raises.

The forced refresh and the tenant invalidation live here too, with their one rate limit. What
it refuses, and how (status, code), is `broker.core.refusals`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from broker.config.load import is_tenant
from broker.config.settings import ProfileSettings
from broker.core.cache import Entry, EntryStatus
from broker.core.errors import UpstreamError
from broker.core.refusals import (
    BadTenant,
    NotAllowed,
    NoTenants,
    ScopeNotAllowed,
    TenantNotAllowed,
    TooSoon,
    UnknownProfile,
)
from broker.core.resources import allows, same_resource
from broker.core.runtime import ProfileRuntime, Runtime
from broker.core.tenants import KIND as TENANT_KIND
from broker.core.tenants import TenantCache
from broker.core.tokens import Token
from broker.core.tokens.clock import Clock
from broker.observe.audit import Audit

# -- what is asked, by whom, and what is handed over --------------------------------------------


class Caller(Protocol):
    """Who asks, as the HTTP side knows them."""

    route: str  # for the audit line: v1, msi
    description: str  # for the audit line: uid/gid/pid, or an address

    def may_use(self, profile: ProfileSettings) -> bool: ...


@dataclass(frozen=True, slots=True)
class Own:
    """The profile's own token: kind `partner` or `aad`. With `scope` (kind `aad`): a token of
    its own tenant for that scope, one of its `scopes` (as `broker.core.resources.spelled`
    writes it); with `cae`: one asked with client capability cp1 (the profile's scope when no
    `scope` is given)."""

    kind: str
    min_remaining: float | None = None  # None: the profile's own
    scope: str = ""
    cae: bool = False


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer tenant's Azure AD token. `tenant` None: it was given more than once;
    `scope` None: the profile's first customer scope."""

    tenant: str | None
    scope: str | None = None
    min_remaining: float | None = None


class Served(NamedTuple):  # a tuple: a third of the cost of a frozen dataclass to make
    token: Token
    hit: bool
    profile: ProfileSettings  # the configuration it was served under
    correlation_id: str | None  # of the refresh that produced the token (audit)
    tenant: str = ""  # customer tenants: the tenant and scope served
    scope: str = ""


class RateLimit:
    """At most one action per key every `interval` s (the interval in force when asked);
    remembers at most `memory` keys, forgetting those whose interval has passed."""

    def __init__(self, clock: Clock, memory: int = 4096) -> None:
        self._clock = clock
        self._memory = memory
        self._last: dict[Any, float] = {}

    def wait(self, key: Any, interval: float) -> float:
        """Seconds left before `key` may act again; 0.0 means it acts now (and is recorded)."""
        now = self._clock.monotonic()
        left = self._last.get(key, -1e18) + interval - now
        if left > 0:
            return left
        if len(self._last) >= self._memory:
            self._last = {k: t for k, t in self._last.items() if t + interval > now}
        self._last[key] = now
        return 0.0


# -- the desk ---------------------------------------------------------------------------------


class Desk:
    def __init__(
        self, current: Callable[[], Runtime], *, clock: Any, metrics: Any, audit: Audit
    ) -> None:
        self._current = current  # the snapshot in force, read again after every await
        self._clock = clock
        self._metrics = metrics
        self._audit = audit
        self._refreshed = RateLimit(clock)
        self._invalidated = RateLimit(clock)
        self._revoked = RateLimit(clock)

    def admit(self, caller: Caller, name: str, runtime: Runtime | None = None) -> ProfileRuntime:
        """The profile, if it exists now and the caller may use it."""
        profile = (runtime or self._current()).profiles.get(name)
        if profile is None:
            raise UnknownProfile(f"no profile named {name!r}")
        if not caller.may_use(profile.settings):
            raise NotAllowed("this caller may not use this profile")
        return profile

    async def serve(
        self, caller: Caller, name: str, target: Own | Customer, *, refused: str | None = None
    ) -> Served:
        """The token `target` names, for `caller`. `refused`: the SHA-256 (lower-case hex) of
        a token the caller saw refused (`token_sha256_to_refresh`): the cached token with
        that hash is dropped and replaced, once (`Entry.revoke`)."""
        profile = self.admit(caller, name)
        entry, tenant, scope = _locate(profile, target)
        if refused is not None:
            self._revoke(entry, refused)
        token = entry.peek(target.min_remaining)
        hit = True
        while token is None:
            try:
                token, hit = await entry.get(target.min_remaining)
            except UpstreamError:
                self.admit(caller, name)  # nothing about a profile the caller lost, either
                raise
            now = self.admit(caller, name)  # the configuration in force after the wait
            if now is not profile:  # rebuilt meanwhile: serve from the new configuration
                profile = now
                entry, tenant, scope = _locate(profile, target)
                token, hit = entry.peek(target.min_remaining), True
        correlation_id = entry.token_correlation_id
        if isinstance(target, Customer):
            self._metrics.count_cache(name, TENANT_KIND, hit)
            self._audit.served_tenant(
                caller.route, name, tenant, scope, caller.description, hit, correlation_id
            )
        else:
            self._metrics.count_cache(name, target.kind, hit)
            self._audit.served(
                caller.route, name, target.kind, caller.description, hit, correlation_id
            )
        return Served(token, hit, profile.settings, correlation_id, tenant, scope)

    def _revoke(self, entry: Entry, digest: str) -> None:
        """Drop the entry's token if `digest` is its hash; at most one replacement per entry
        every refresh_min_interval (a caller refusing each new token must not turn the broker
        into a loop on Azure AD), keyed by the entry itself: however many spellings reach it
        (a resource with or without its slash, a tenant id in any case), it has one limit.
        Racing callers with the same hash: the first drops it, the others find it gone and
        join the one refresh."""
        if not entry.names(digest):
            return
        interval = self._current().settings.server.refresh_min_interval
        left = self._revoked.wait(entry, interval)
        if left:
            raise TooSoon(
                "too_many_refreshes",
                "refresh_rate",
                "this token replaced a refused one moments ago",
                int(left) + 1,
            )
        entry.revoke(digest)

    async def refresh(self, caller: Caller, name: str, kind: str) -> EntryStatus:
        """A forced refresh of the profile's `kind` token, starting from a fresh Azure AD
        token; joins one in flight; at most one per profile every refresh_min_interval."""
        runtime = self._current()
        profile = self.admit(caller, name, runtime)
        interval = runtime.settings.server.refresh_min_interval
        left = self._refreshed.wait(name, interval)
        if left:
            raise TooSoon(
                "too_many_refreshes",
                "refresh_rate",
                f"profile {name!r} was refreshed moments ago",
                int(left) + 1,
            )
        aad, target = profile.entries["aad"], profile.entries[kind]
        await aad.refresh()
        if target is not aad:
            await target.refresh()
        return target.status()

    def tenants(self, caller: Caller, name: str) -> TenantCache:
        """The profile's tenant cache, for the tenant listing."""
        profile = self.admit(caller, name)
        if profile.tenants is None:
            raise NoTenants(f"profile {name!r} has no customer_tenants")
        return profile.tenants

    def invalidate(self, caller: Caller, name: str, raw: str) -> tuple[str, int]:
        """Drop a customer tenant's tokens and failure memory: (tenant, tokens dropped). At
        most once per tenant every refresh_min_interval (forgetting nothing is free)."""
        runtime = self._current()
        cache = self.tenants(caller, name)
        tenant = _tenant(cache, raw)
        if tenant not in cache.tenants:
            return tenant, 0
        interval = runtime.settings.server.refresh_min_interval
        left = self._invalidated.wait((name, tenant), interval)
        if left:
            raise TooSoon(
                "too_many_invalidations",
                "invalidate_rate",
                "this tenant was invalidated moments ago",
                int(left) + 1,
            )
        return tenant, cache.invalidate(tenant)


def _locate(profile: ProfileRuntime, target: Own | Customer) -> tuple[Entry, str, str]:
    """The entry that holds what `target` asks of `profile`, with the tenant and scope."""
    if isinstance(target, Own):
        if not target.scope and not target.cae:  # the profile's own, as configured: every hit
            return profile.entries[target.kind], "", ""
        settings = profile.settings
        scope = target.scope or settings.scope
        if target.scope and (target.kind != "aad" or not allows(settings, scope)):
            raise ScopeNotAllowed("the scope is not the profile's scope or in its scopes")
        if profile.make_scoped is None or (
            not target.cae and same_resource(scope, settings.scope)
        ):  # the profile's own entry (a static token file has only that one token)
            return profile.entries[target.kind], "", ""
        return profile.own_entry(scope, target.cae), "", scope
    cache = profile.tenants
    if cache is None:
        raise NoTenants(f"profile {profile.name!r} has no customer_tenants")
    tenant = _tenant(cache, target.tenant)
    scope = cache.default_scope if target.scope is None else target.scope
    if not cache.allows_scope(scope):
        raise ScopeNotAllowed("the scope is not in the profile's customer_scopes")
    return cache.entry(tenant, scope), tenant, scope


def _tenant(cache: TenantCache, raw: str | None) -> str:
    if raw is None:
        raise BadTenant("give tenant once")
    if not is_tenant(raw):
        raise BadTenant("tenant must be a tenant id or domain name")
    tenant = raw.lower()
    if not cache.allows_tenant(tenant):
        raise TenantNotAllowed("this tenant is not in the profile's customer_tenants")
    return tenant
