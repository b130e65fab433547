"""Customer tenants over /v1: `GET /v1/token/{profile}?tenant=T&scope=S`, the tenant listing
`GET /v1/tenants/{profile}` (never a token) and `POST /v1/tenants/{profile}/{tenant}/invalidate`.

The /v1 guards (origin, required header, caller access) apply as to every /v1 request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from broker.config.errors import UpstreamError
from broker.config.load import is_tenant
from broker.core.render import JSON, json_body, render_tenant, tenant_body
from broker.core.tenants import KIND, TenantCache
from broker.http.answer import Answer
from broker.http.callers import identify
from broker.http.common import (
    HEADERS,
    HEADS,
    NO_STORE,
    Reply,
    error_response,
    path_param,
    upstream_error_response,
)

if TYPE_CHECKING:
    from broker.http.v1 import V1Handlers

PAGE_DEFAULT = 100
PAGE_MAX = 1000
_RATE_MEMORY = 4096  # (profile, tenant) invalidations remembered for the rate limit


def single(query: Any, name: str) -> str | bool | None:
    """The one value of `name`, None when absent, False when given more than once."""
    values = query.getall(name, [])
    if len(values) > 1:
        return False
    return values[0] if values else None


class TenantHandlers:
    def __init__(self, v1: V1Handlers) -> None:
        self.v1 = v1
        self.broker = v1.broker
        self._last_invalidated: dict[tuple[str, str], float] = {}

    def _cache(self, request: web.Request, name: str) -> TenantCache | web.Response:
        """The profile's tenant cache after the profile and caller checks, or the refusal."""
        profile = self.broker.settings.profiles.get(name)
        if profile is None:
            return error_response(404, "unknown_profile", f"no profile named {name!r}")
        if not self.v1.allowed(profile, identify(request), request):
            return self.v1._refuse(
                "not_allowed", 403, "forbidden", "this caller may not use this profile"
            )
        cache = self.broker.tenants.get(name)
        if cache is None:
            return error_response(
                400, "tenants_not_configured", f"profile {name!r} has no customer_tenants"
            )
        return cache

    @staticmethod
    def _tenant(cache: TenantCache, raw: Any) -> str | web.Response:
        if raw is False:
            return error_response(400, "bad_tenant", "give tenant once")
        if not isinstance(raw, str) or not is_tenant(raw):
            return error_response(400, "bad_tenant", "tenant must be a tenant id or domain name")
        tenant = raw.lower()
        if not cache.allows_tenant(tenant):
            return error_response(
                403, "tenant_not_allowed", "this tenant is not in the profile's customer_tenants"
            )
        return tenant

    # -- GET /v1/token/{profile}?tenant=&scope= ---------------------------------------------

    async def token(self, request: web.Request, name: str, media: str) -> Reply:
        broker = self.broker
        query = request.query
        kind = single(query, "kind")
        if kind not in (None, "aad"):
            return error_response(
                400,
                "bad_kind",
                "customer-tenant tokens are Azure AD tokens: kind=aad or no kind",
            )
        raw_tenant = single(query, "tenant")
        if raw_tenant is None:
            return error_response(400, "bad_request", "scope is only for customer tenants")
        cache = self._cache(request, name)
        if isinstance(cache, web.Response):
            return cache
        tenant = self._tenant(cache, raw_tenant)
        if isinstance(tenant, web.Response):
            return tenant
        scope = single(query, "scope")
        if scope is None:
            scope = cache.default_scope
        if scope is False or not cache.allows_scope(scope):  # type: ignore[arg-type]
            return error_response(
                400, "scope_not_allowed", "the scope is not in the profile's customer_scopes"
            )
        assert isinstance(scope, str)
        entry = cache.lookup(tenant, scope)
        token = entry.peek() if entry is not None else None
        hit = token is not None
        if token is None or entry is None:
            try:
                token, hit, entry = await cache.get(tenant, scope)
            except UpstreamError as e:
                return upstream_error_response(e)
        broker.metrics.count_cache(name, KIND, hit)
        broker.audit.served_tenant(
            "v1",
            name,
            tenant,
            scope,
            identify(request).description,
            hit,
            entry.token_correlation_id,
        )
        expires_in = int(token.expires_mono - broker.clock.monotonic())
        fields = render_tenant(token, name, tenant, scope, expires_in)
        return Answer(HEADS[media], tenant_body(fields, media))

    # -- GET /v1/tenants/{profile} ------------------------------------------------------------

    async def listing(self, request: web.Request) -> web.Response:
        denied = self.v1.guard(request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        cache = self._cache(request, name)
        if isinstance(cache, web.Response):
            return cache
        query = request.query
        limit_text = single(query, "limit")
        limit = PAGE_DEFAULT
        if limit_text is not None:
            if not isinstance(limit_text, str) or not limit_text.isdigit() or len(limit_text) > 6:
                return error_response(400, "bad_limit", f"limit must be 1 to {PAGE_MAX}")
            limit = int(limit_text)
            if not 1 <= limit <= PAGE_MAX:
                return error_response(400, "bad_limit", f"limit must be 1 to {PAGE_MAX}")
        after = single(query, "after")
        if after is not None and (not isinstance(after, str) or not is_tenant(after)):
            return error_response(400, "bad_after", "after must be a tenant from a previous page")
        rows, more = cache.page(after.lower() if isinstance(after, str) else None, limit)
        body = {
            "profile": name,
            "customer_tenants": "*"
            if cache.allows_tenant("*")
            else len(cache.profile.customer_tenants),
            "customer_scopes": list(cache.profile.customer_scopes),
            "entries": len(cache),
            "tokens": cache.tokens(),
            "max_customer_tokens": cache.profile.max_customer_tokens,
            "upstream": {
                "in_flight": cache.limiter.active,
                "queued": cache.limiter.queued,
                "limit": cache.limiter.limit,
            },
            "profile_block": cache.profile_block(),
            "tenants_seen": len(cache.tenants),
            "tenants": rows,
            "next": more,
        }
        return web.Response(body=json_body(body), headers=HEADERS[JSON])

    # -- POST /v1/tenants/{profile}/{tenant}/invalidate ---------------------------------------

    async def invalidate(self, request: web.Request) -> web.Response:
        denied = self.v1.guard(request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        cache = self._cache(request, name)
        if isinstance(cache, web.Response):
            return cache
        tenant = self._tenant(cache, path_param(request, "tenant"))
        if isinstance(tenant, web.Response):
            return tenant
        if tenant not in cache.tenants:  # nothing to forget: no rate limit needed either
            return web.json_response(
                {"profile": name, "tenant": tenant, "invalidated": True, "tokens_dropped": 0},
                headers=NO_STORE,
            )
        now = self.broker.clock.monotonic()
        interval = self.broker.settings.server.refresh_min_interval
        key = (name, tenant)
        wait = self._last_invalidated.get(key, -1e9) + interval - now
        if wait > 0:
            self.broker.metrics.rejected.labels("invalidate_rate").inc()
            return error_response(
                429,
                "too_many_invalidations",
                "this tenant was invalidated moments ago",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        if len(self._last_invalidated) >= _RATE_MEMORY:
            self._last_invalidated = {
                k: t for k, t in self._last_invalidated.items() if t + interval > now
            }
        self._last_invalidated[key] = now
        dropped = cache.invalidate(tenant)
        return web.json_response(
            {"profile": name, "tenant": tenant, "invalidated": True, "tokens_dropped": dropped},
            headers=NO_STORE,
        )
