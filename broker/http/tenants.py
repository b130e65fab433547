"""Customer tenants over /v1, besides their tokens (`GET /v1/token/{profile}?tenant=`, in
`v1.py`): the tenant listing `GET /v1/tenants/{profile}` (never a token) and
`POST /v1/tenants/{profile}/{tenant}/invalidate`.

The /v1 guards apply as to every /v1 request; the profile and caller checks, the tenant's
validation and the invalidation's rate limit are the desk's (`broker.core.serve`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.config.load import is_tenant
from broker.core.refusals import Refused
from broker.core.tokens.render import JSON, json_body
from broker.http.access import guard, refusal, requester
from broker.http.common import HEADERS, NO_STORE, error_response, path_param, single

PAGE_DEFAULT = 100
PAGE_MAX = 1000


class TenantHandlers:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    # -- GET /v1/tenants/{profile} ------------------------------------------------------------

    async def listing(self, request: web.Request) -> web.Response:
        broker = self.broker
        denied = guard(broker.runtime, broker.metrics, request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        try:
            cache = broker.desk.tenants(requester(request), name)
        except Refused as e:
            return refusal(broker.metrics, e)
        query = request.query
        limit_text = single(query, "limit")
        limit = PAGE_DEFAULT
        if limit_text is not None:
            if not (isinstance(limit_text, str) and limit_text.isascii() and limit_text.isdigit()):
                return error_response(400, "bad_limit", f"limit must be 1 to {PAGE_MAX}")
            limit = int(limit_text[:7])  # ASCII digits only ("²" is a digit to isdigit())
            if len(limit_text) > 6 or not 1 <= limit <= PAGE_MAX:
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
        broker = self.broker
        denied = guard(broker.runtime, broker.metrics, request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        raw = path_param(request, "tenant")
        try:
            tenant, dropped = broker.desk.invalidate(requester(request), name, raw)
        except Refused as e:
            return refusal(broker.metrics, e)
        return web.json_response(
            {"profile": name, "tenant": tenant, "invalidated": True, "tokens_dropped": dropped},
            headers=NO_STORE,
        )
