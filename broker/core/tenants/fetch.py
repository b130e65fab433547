"""How a customer-tenant entry gets its token: the profile's and the tenant's remembered
refusals first, then the fan-out limit, then Azure AD (`fetch_tenant_token`)."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.config.settings import ProfileSettings
from broker.core.cache import Fetch
from broker.core.credentials import Credential
from broker.core.errors import UpstreamError
from broker.core.tenants.aadsts import REFRESH_TOKEN_INVALID, TenantRefused, refusal_error
from broker.core.tenants.limiter import SLOT_DEADLINE, FifoLimiter
from broker.core.tenants.memory import FailureMemory, TenantState
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds, Upstream


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
    keyed (client_id, tenant, scope): see `broker.core.cache.shared.shared_key`.)"""
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


class Fetcher:
    """One profile's way to its customer tenants' tokens, shared by all their entries."""

    __slots__ = ("_confirming", "credential", "limiter", "memory", "profile", "upstream")

    def __init__(
        self,
        profile: ProfileSettings,
        credential: Credential,
        upstream: Upstream,
        memory: FailureMemory,
        limiter: FifoLimiter,
    ) -> None:
        self.profile, self.credential, self.upstream = profile, credential, upstream
        self.memory, self.limiter = memory, limiter
        self._confirming: asyncio.Task[None] | None = None

    @property
    def deadline(self) -> float:
        """How long one call holds its slot: past it, the call goes on outside the limit."""
        return self.profile.upstream_timeout * SLOT_DEADLINE

    async def fetch(self, state: TenantState, scope: str, ids: RefreshIds) -> Token:
        memory = self.memory
        memory.check(state)
        async with self.limiter.slot(state.name, self.deadline):
            memory.check(state)  # a refusal may have landed while this one queued
            try:
                token = await fetch_tenant_token(
                    self.profile, self.credential, self.upstream, state.name, scope, ids
                )
            except UpstreamError as e:
                memory.remember(state, e)
                refused = e
            else:
                memory.succeeded(state, scope)
                return token
        dead = isinstance(refused, TenantRefused) and refused.refusal is REFRESH_TOKEN_INVALID
        if dead and not state.forgotten:
            await self.confirm()
        raise refused

    async def confirm(self) -> None:
        """One customer tenant says the refresh token is dead: ask the partner's own tenant
        (one Azure AD call, shared by every tenant saying so meanwhile) before the verdict
        reaches the whole profile."""
        if self._confirming is None:
            task = asyncio.get_running_loop().create_task(self._ask_partner_tenant())
            self._confirming = task

            def done(_: object) -> None:
                if self._confirming is task:
                    self._confirming = None

            task.add_done_callback(done)
        await asyncio.shield(self._confirming)

    async def _ask_partner_tenant(self) -> None:
        profile, ids = self.profile, RefreshIds.new()
        if profile.tenant_id is None:
            return
        try:
            async with self.limiter.slot(profile.tenant_id, self.deadline):
                await fetch_tenant_token(
                    profile, self.credential, self.upstream, profile.tenant_id, profile.scope, ids
                )
        except TenantRefused as e:
            if e.refusal is REFRESH_TOKEN_INVALID:
                self.memory.confirmed(e)
                return
            verdict = "unconfirmed"
        except UpstreamError:
            verdict = "unconfirmed"  # no answer either way: the verdict stays with its tenant
        else:
            verdict = "refuted"
        self.memory.not_confirmed(verdict, ids.correlation_id)


class EntryFetch:
    """One entry's fetch and its log, in one small object (an entry may be one of 50,000): its
    fetcher, tenant and scope, and the cache's logger. As a log it is the entry's logger without
    a bound copy per entry: tenant and scope are added when a line is logged. Profile and kind
    are bound once, on the cache's logger, so `bind` (which `Entry` calls with exactly those)
    returns this same object."""

    __slots__ = ("_log", "fetcher", "scope", "state")

    def __init__(self, fetcher: Fetcher, state: TenantState, scope: str, log: Any) -> None:
        self.fetcher, self.state, self.scope, self._log = fetcher, state, scope, log

    async def __call__(self, ids: RefreshIds) -> Token:
        return await self.fetcher.fetch(self.state, self.scope, ids)

    def bind(self, **_already_bound: Any) -> EntryFetch:
        return self

    def info(self, event: str, **kw: Any) -> Any:
        return self._log.info(event, tenant=self.state.name, scope=self.scope, **kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._log.warning(event, tenant=self.state.name, scope=self.scope, **kw)

    def exception(self, event: str, **kw: Any) -> Any:
        return self._log.exception(event, tenant=self.state.name, scope=self.scope, **kw)


class AfterLanding:
    """The fetch of an entry made again after its tenant was invalidated while a fetch for the
    same (tenant, scope) was in flight: it starts when that one has landed (its answer dropped
    with the old entry), so one (tenant, scope) never has two Azure AD calls at once; callers
    who ask meanwhile join this entry's one flight."""

    __slots__ = ("earlier", "fetch")

    def __init__(self, fetch: Fetch, earlier: asyncio.Future[Any]) -> None:
        self.fetch = fetch
        self.earlier: asyncio.Future[Any] | None = earlier

    async def __call__(self, ids: RefreshIds) -> Token:
        earlier = self.earlier
        if earlier is not None:
            await asyncio.wait({earlier})  # its outcome is not ours: never raised here
            self.earlier = None
        return await self.fetch(ids)
