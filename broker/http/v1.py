"""The /v1 endpoints for local tools, and the operators' /healthz, /readyz and /metrics.

Every /v1 request passes the origin guard (no proxy headers, an allowed Host) and must carry
the required header; a restricted profile also checks the caller (uid/group on the unix socket,
access key). A caller that may not use a profile learns nothing about it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from broker.config.errors import UpstreamError
from broker.config.settings import ProfileSettings, Settings
from broker.core.render import JSON, Negotiator, Rendered, json_body, render
from broker.core.service import Broker
from broker.core.sources import KINDS
from broker.http.answer import Answer
from broker.http.callers import ACCESS_KEY_HEADER, Caller, identify, may_use, restricted
from broker.http.common import (
    HEADERS,
    HEADS,
    NO_STORE,
    PARAMS,
    Reply,
    error_response,
    path_param,
    upstream_error_response,
)
from broker.http.tenants import TenantHandlers
from broker.observe.logs import iso_time
from broker.observe.metrics import CONTENT_TYPE

_NOT_ALLOWED = "this caller may not use this profile"


class V1Handlers:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._negotiate = Negotiator()
        self._rendered: dict[tuple[str, str], Rendered] = {}
        self._last_forced: dict[str, float] = {}
        self._restricted_for: Settings | None = None
        self._restricted_names: frozenset[str] = frozenset()
        self.tenants = TenantHandlers(self)

    @property
    def settings(self) -> Settings:
        return self.broker.settings

    def _refuse(self, reason: str, status: int, code: str, message: str) -> web.Response:
        self.broker.metrics.rejected.labels(reason).inc()
        return error_response(status, code, message)

    def guard(self, request: web.Request) -> web.Response | None:
        """Origin checks and the required header; None when the request may pass."""
        rejection = self.broker.guard.v1(request.headers, request.raw_path)
        if rejection is None:
            return None
        return self._refuse(rejection.reason, rejection.status, rejection.code, rejection.message)

    def allowed(self, profile: ProfileSettings, caller: Caller, request: web.Request) -> bool:
        return not restricted(profile) or may_use(
            profile, caller, request.headers.get(ACCESS_KEY_HEADER)
        )

    # -- tokens ------------------------------------------------------------------------------

    def _restricted(self) -> frozenset[str]:
        """Names of the profiles that check their callers, recomputed when settings change."""
        settings = self.broker.settings
        if self._restricted_for is not settings:
            self._restricted_names = frozenset(
                name for name, p in settings.profiles.items() if restricted(p)
            )
            self._restricted_for = settings
        return self._restricted_names

    def token_default(self, request: web.Request) -> Reply | Awaitable[Reply]:
        """`GET /v1/token`: the profile `default`."""
        return self.token(request, "default")

    def token_named(self, request: web.Request) -> Reply | Awaitable[Reply]:
        """`GET /v1/token/{profile}`."""
        return self.token(request, request[PARAMS]["profile"])

    def token(self, request: web.Request, name: str) -> Reply | Awaitable[Reply]:
        """The hot path. A cache hit is answered here and now, with dictionary lookups and no
        coroutine; only a miss (or a customer tenant's token) returns one to await."""
        broker = self.broker
        headers = request.headers
        denied = self.guard(request)
        if denied is not None:
            return denied
        kind = "partner"
        customer = False
        if request.query_string:
            query = request.query
            customer = "tenant" in query or "scope" in query
            kind = query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        media = self._negotiate(headers.get("Accept"))
        if media is None:
            return error_response(
                406,
                "not_acceptable",
                "offered: application/json, application/xml, text/xml, text/plain",
            )
        if customer:
            return self.tenants.token(request, name, media)
        entry = broker.cache.entries.get((name, kind))
        if entry is None:
            return error_response(404, "unknown_profile", f"no profile named {name!r}")
        caller = identify(request)
        restricted_names = (
            self._restricted_names
            if self._restricted_for is broker.settings
            else self._restricted()
        )
        if name in restricted_names and not self.allowed(
            broker.settings.profiles[name], caller, request
        ):
            return self._refuse("not_allowed", 403, "forbidden", _NOT_ALLOWED)
        token = entry.peek()
        if token is None:
            return self._token_miss(request, name, kind, media, entry, caller)
        return self._answer(name, kind, media, entry, caller, token, True)

    async def _token_miss(
        self, request: web.Request, name: str, kind: str, media: str, entry: Any, caller: Caller
    ) -> Reply:
        broker = self.broker
        try:
            token, hit = await entry.get()
        except UpstreamError as e:
            return upstream_error_response(e)
        # A reload may have removed or restricted the profile while this caller waited.
        profile = broker.settings.profiles.get(name)
        if profile is None:
            return error_response(404, "unknown_profile", f"no profile named {name!r}")
        if name in self._restricted() and not self.allowed(profile, caller, request):
            return self._refuse("not_allowed", 403, "forbidden", _NOT_ALLOWED)
        return self._answer(name, kind, media, entry, caller, token, hit)

    def _answer(
        self, name: str, kind: str, media: str, entry: Any, caller: Caller, token: Any, hit: bool
    ) -> Reply:
        broker = self.broker
        broker.metrics.count_cache(name, kind, hit)
        broker.audit.served("v1", name, kind, caller.description, hit, entry.token_correlation_id)
        rendered = self._rendered.get((name, kind))
        if rendered is None or rendered.token is not token:
            rendered = self._rendered[(name, kind)] = render(token, name, kind)
        expires_in = int(token.expires_mono - broker.clock.monotonic())
        return Answer(HEADS[media], rendered.body(media, expires_in))

    async def refresh(self, request: web.Request) -> web.Response:
        denied = self.guard(request)
        if denied is not None:
            return denied
        name = path_param(request, "profile")
        kind = request.query.get("kind", "partner")
        if kind not in KINDS:
            return error_response(400, "bad_kind", "kind must be 'partner' or 'aad'")
        aad = self.broker.cache.entry(name, "aad")
        target = self.broker.cache.entry(name, kind)
        if aad is None or target is None:
            return error_response(404, "unknown_profile", f"no profile named {name!r}")
        if not self.allowed(self.settings.profiles[name], identify(request), request):
            return self._refuse("not_allowed", 403, "forbidden", _NOT_ALLOWED)
        now = self.broker.clock.monotonic()
        wait = self._last_forced.get(name, -1e9) + self.settings.server.refresh_min_interval - now
        if wait > 0:
            self.broker.metrics.rejected.labels("refresh_rate").inc()
            return error_response(
                429,
                "too_many_refreshes",
                f"profile {name!r} was refreshed moments ago",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        self._last_forced[name] = now
        try:
            await aad.refresh()  # a forced partner refresh starts from a fresh AAD token too
            if target is not aad:
                await target.refresh()
        except UpstreamError as e:
            return upstream_error_response(e)
        status = target.status()
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
        denied = self.guard(request)
        if denied is not None:
            return denied
        caller = identify(request)
        visible = {
            name for name, p in self.settings.profiles.items() if self.allowed(p, caller, request)
        }
        body: dict[str, Any] = {
            "profiles": self.profile_table(visible),
            # Settings a reload read but the process cannot apply until it restarts.
            "restart_pending": self.broker.restart_pending,
        }
        shared = self.broker.shared
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

    def profile_table(self, visible: set[str]) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for s in self.broker.statuses():
            p = self.settings.profiles.get(s.profile)
            if p is None or s.profile not in visible:
                continue
            row = table.setdefault(
                s.profile, {"credential": p.credential, "warm": p.warm, "cloud": p.cloud}
            )
            row[s.kind] = {
                "state": s.state,
                "expires_on": s.expires_on,
                "expires_at": iso_time(s.expires_on),
                "expires_in": s.expires_in,
                "next_attempt_in": s.next_attempt_in,
                "failures_in_row": s.failures,
                "waiters": s.waiters,
                "last_error": s.last_error,
                "upstream_calls": s.calls,
            }
        for name, row in table.items():
            mfa = self.broker.mfa(name)
            if mfa is not None:  # Partner Center refuses app+user tokens without MFA (900421)
                row["mfa"] = mfa
            cache = self.broker.tenants.get(name)
            if cache is not None:
                row["customer_tenants"] = {
                    "tokens": len(cache),
                    "tenants": cache.states(),
                    "profile_block": cache.profile_block(),
                }
        return table

    # -- operators ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status": "ok"}', headers=HEADERS[JSON])

    def _operator_guard(self, request: web.Request) -> web.Response | None:
        """/readyz and /metrics: no required header (scrapers and probes cannot send one), but
        no proxied request and no foreign Host either (a DNS-rebound page could read them)."""
        rejection = self.broker.guard.origin(request.headers, request.raw_path)
        if rejection is None:
            return None
        return self._refuse(rejection.reason, rejection.status, rejection.code, rejection.message)

    def _hidden(self, request: web.Request) -> frozenset[str]:
        """The restricted profiles this caller may not use: never named to it."""
        names = self._restricted()
        if not names:
            return names
        caller = identify(request)
        profiles = self.settings.profiles
        return frozenset(n for n in names if not self.allowed(profiles[n], caller, request))

    async def readyz(self, request: web.Request) -> web.Response:
        denied = self._operator_guard(request)
        if denied is not None:
            return denied
        ok, detail = self.broker.ready()
        hidden = self._hidden(request)
        detail = {name: states for name, states in detail.items() if name not in hidden}
        body = json_body({"ready": ok, "profiles": detail})
        return web.Response(status=200 if ok else 503, body=body, headers=HEADERS[JSON])

    async def metrics(self, request: web.Request) -> web.Response:
        denied = self._operator_guard(request)
        if denied is not None:
            return denied
        body = self.broker.metrics.render()
        hidden = self._hidden(request)
        if hidden:
            labels = tuple(f'profile="{name}"'.encode() for name in hidden)
            body = b"\n".join(
                line for line in body.split(b"\n") if not any(label in line for label in labels)
            )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # -- everything else ---------------------------------------------------------------------

    async def not_found(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            return await self.method_not_allowed(request)
        return error_response(404, "not_found", "no such endpoint")

    async def method_not_allowed(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":  # a CORS preflight: browsers get nothing here
            return self._refuse(
                "preflight", 403, "preflight_refused", "cross-origin requests are not served"
            )
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed here")
