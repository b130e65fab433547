"""The /v1 endpoints for local tools: a token (the profile's own, or a customer tenant's), a
forced refresh, and the profiles' state.

Each handler parses, asks `broker.core.serve` and renders: the origin guard and the required
header come first (`access.guard`); whether the caller may use the profile, before and after any
wait, is decided by the desk. A caller that may not use a profile learns nothing about it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from broker.core.errors import UpstreamError
from broker.core.refusals import Refused
from broker.core.resources import spelled
from broker.core.runtime import Runtime
from broker.core.serve import Customer, Own
from broker.core.sources import KINDS
from broker.core.tokens.render import (
    JSON,
    Negotiator,
    Rendered,
    json_body,
    render,
    render_tenant,
    tenant_body,
)
from broker.http.access import guard, refusal, rejected, requester
from broker.http.common import (
    HEADERS,
    NO_STORE,
    error_response,
    path_param,
    single,
    upstream_error_response,
)
from broker.http.managed import one_resource
from broker.observe.logs import iso_time

OFFERED = "offered: application/json, application/xml, text/xml, text/plain"
OWN: dict[str, Own] = {kind: Own(kind) for kind in KINDS}  # a profile's own tokens, by kind


def customer_target(query: Any) -> Own | Customer | web.Response:
    """`?tenant=T&scope=S` (and kind=aad or none): a customer tenant's token; `?scope=S`
    alone: the profile's own tenant, for one of its `scopes`."""
    if single(query, "kind") not in (None, "aad"):
        return error_response(
            400, "bad_kind", "scoped and customer-tenant tokens are Azure AD tokens: kind=aad"
        )
    tenant = single(query, "tenant")
    scope = single(query, "scope")
    if tenant is None:
        if not isinstance(scope, str) or not one_resource(scope):
            return error_response(400, "bad_request", "give scope once, one scope")
        return Own("aad", scope=spelled(scope))
    return Customer(
        tenant if isinstance(tenant, str) else None,
        scope if isinstance(scope, str) or scope is None else "",  # twice: allowed by none
    )


class V1Handlers:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._negotiate = Negotiator()
        self._rendered: dict[tuple[str, str], Rendered] = {}  # by (profile, kind)

    async def token(self, request: web.Request, profile: str | None = None) -> web.Response:
        """`GET /v1/token[/{profile}]`, `?kind=` or `?tenant=&scope=`; `profile` when the
        route is the profile's own (see `broker.http.routes`)."""
        broker = self.broker
        headers, path = request.headers, request.raw_path
        rejection = broker.runtime.guard.v1(headers, path)  # as `guard` does
        if rejection is not None:
            return rejected(broker.metrics, rejection)
        name = profile or request.match_info.get("profile", "default")
        kind, customer = "partner", False
        if "?" in path:  # the raw target: its query is parsed only when there is one
            query = request.query
            customer = "tenant" in query or "scope" in query
            kind = query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        media = self._negotiate(headers.get(hdrs.ACCEPT))
        if media is None:
            return error_response(406, "not_acceptable", OFFERED)
        target: Own | Customer
        if customer:
            asked = customer_target(request.query)
            if isinstance(asked, web.Response):
                return asked
            target = asked
        else:
            target = OWN[kind]
        try:
            served = await broker.desk.serve(requester(request), name, target)
        except Refused as e:
            return refusal(broker.metrics, e)
        except UpstreamError as e:
            return upstream_error_response(e)
        token = served.token
        expires_in = int(token.expires_mono - broker.clock.monotonic())
        if customer:  # asked with a query: a customer tenant's, or another scope's
            if isinstance(target, Customer):
                fields = render_tenant(token, name, served.tenant, served.scope, expires_in)
                return web.Response(body=tenant_body(fields, media), headers=HEADERS[media])
            if target.scope:  # another scope: rendered each time
                body = render(token, name, "aad").body(media, expires_in)
                return web.Response(body=body, headers=HEADERS[media])
        rendered = self._rendered.get((name, kind))
        if rendered is None or rendered.token is not token:
            rendered = self._rendered[(name, kind)] = render(token, name, kind)
        return web.Response(body=rendered.body(media, expires_in), headers=HEADERS[media])

    async def refresh(self, request: web.Request) -> web.Response:
        """`POST /v1/token/{profile}/refresh?kind=`: answers the new expiry, not the token."""
        broker = self.broker
        denied = guard(broker.runtime, broker.metrics, request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        kind = request.query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        try:
            status = await broker.desk.refresh(requester(request), name, kind)
        except Refused as e:
            return refusal(broker.metrics, e)
        except UpstreamError as e:
            return upstream_error_response(e)
        return web.json_response(
            {
                "profile": name,
                "kind": kind,
                "refreshed": True,
                "expires_on": status.expires_on,
                "expires_at": iso_time(status.expires_on),
                "expires_in": status.expires_in,
            },
            headers=NO_STORE,
        )

    async def profiles(self, request: web.Request) -> web.Response:
        """`GET /v1/profiles`: the state of each profile this caller may use; never a token."""
        broker = self.broker
        runtime = broker.runtime
        denied = guard(runtime, broker.metrics, request)
        if denied is not None:
            return denied
        caller = requester(request)
        visible = {n for n, p in runtime.settings.profiles.items() if caller.may_use(p)}
        body: dict[str, Any] = {
            "profiles": profile_table(broker, runtime, visible),
            # Settings a reload read but the process cannot apply until it restarts.
            "restart_pending": list(runtime.restart_pending),
        }
        shared = broker.shared
        if shared.enabled:
            st = shared.status()
            body["shared"] = {
                "state": st.state,
                "redis": st.redis_url,
                "last_error": st.last_error,
                "hits": st.hits,
                "misses": st.misses,
                "lease_waits": st.lease_waits,
                "errors": st.errors,
            }
        return web.Response(body=json_body(body), headers=HEADERS[JSON])


def profile_table(broker: Any, runtime: Runtime, visible: set[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, profile in runtime.profiles.items():
        if name not in visible:
            continue
        p = profile.settings
        row = table[name] = {"credential": p.credential, "warm": p.warm, "cloud": p.cloud}
        for kind, entry in profile.entries.items():
            s = entry.status()
            row[kind] = {
                "state": s.state,
                "expires_on": s.expires_on,
                "expires_at": iso_time(s.expires_on),
                "expires_in": s.expires_in,
                "next_attempt_in": s.next_attempt_in,
                "failures_in_row": s.failures,
                "waiters": s.waiters,
                "last_error": s.last_error,
                "upstream_calls": s.calls,
                "source": s.source,
            }
        mfa = broker.mfa(name, runtime)
        if mfa is not None:  # Partner Center refuses app+user tokens without MFA (900421)
            row["mfa"] = mfa
        life = broker.refresh_token(name, runtime)
        if life is not None:  # age and days left before Azure AD's 90-day inactivity limit
            row["refresh_token"] = life
        # For `doctor`'s fixes (the admin-consent URL): not secrets.
        row.update(tenant_id=p.tenant_id, client_id=p.client_id, authority=p.authority)
        cache = profile.tenants
        if cache is not None:
            row["customer_tenants"] = {
                "tokens": len(cache),
                "tenants": cache.states(),
                "profile_block": cache.profile_block(),
            }
    return table
