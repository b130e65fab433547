"""`GET /msi/token`: the App Service managed-identity protocol, so the Azure SDKs'
ManagedIdentityCredential and DefaultAzureCredential fetch the profile's Azure AD token from
the broker unchanged (IDENTITY_ENDPOINT and IDENTITY_HEADER set).

Answers as the SDKs parse them: `expires_on` is whole epoch seconds as a string of digits, and
`resource` echoes exactly what the caller sent (the async SDK caches under that key). Errors
are `{"statusCode", "message"}`, which the SDKs surface.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.config.errors import UpstreamError
from broker.config.load import is_tenant
from broker.config.settings import ProfileSettings
from broker.core.render import JSON
from broker.core.tenants import KIND
from broker.http.answer import Answer
from broker.http.callers import identify, restricted
from broker.http.common import HEADS, NO_STORE, REASON, Reply, path_param, retry_after

API_VERSION = "2019-08-01"
# The identity parameters the SDKs send, and the profile setting each one is matched against.
SELECTORS = {
    "client_id": "client_id",
    "object_id": "object_id",
    "principal_id": "object_id",
    "mi_res_id": "resource_id",
    "resource_id": "resource_id",
}
_HEADERS = {"Content-Type": "application/json", **NO_STORE}


def _resource_of(scope: str) -> str:
    return scope.split()[0].removesuffix("/.default").rstrip("/").lower()


def _fail(
    status: int, message: str, headers: dict[str, str] | None = None, reason: str = "msi"
) -> web.Response:
    response = web.Response(
        status=status,
        body=json.dumps({"statusCode": status, "message": message}).encode(),
        headers={**_HEADERS, **(headers or {})},
    )
    response[REASON] = reason
    return response


class MsiHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        self.broker.metrics.rejected.labels(reason).inc()
        return _fail(status, message, reason=reason)

    def _profile(self, query: Any) -> ProfileSettings | str:
        """The profile the request names (or the default one), or why none fits."""
        msi = self.broker.settings.msi
        profiles = self.broker.settings.profiles
        given = [(k, query[k]) for k in SELECTORS if k in query]
        if len(given) > 1:
            return "give at most one of client_id, object_id, principal_id, mi_res_id"
        if not given:
            return profiles[msi.profile]
        param, value = given[0]
        matches = [
            p
            for p in profiles.values()
            if getattr(p, SELECTORS[param])
            and getattr(p, SELECTORS[param]).lower() == value.lower()
        ]
        if len(matches) > 1:  # never guess which identity a caller meant
            names = ", ".join(sorted(p.name for p in matches))
            return (
                f"{param} {value[:64]!r} matches several identities (profiles {names}): "
                "select one by object_id or mi_res_id instead"
            )
        if matches:
            return matches[0]
        return f"no identity with {param} {value[:64]!r} is configured"

    def _checked(self, request: web.Request) -> web.Response | None:
        """The endpoint is on, the origin is local, the identity header is right, the query
        names the api-version and a resource; else the refusal."""
        broker = self.broker
        if broker.settings.msi is None or broker.msi_header is None:
            return _fail(404, "the managed-identity endpoint is not configured ([msi])")
        rejection = broker.guard.origin(request.headers, request.raw_path)
        if rejection is not None:
            return self._refuse(rejection.reason, rejection.status, rejection.message)
        presented = request.headers.get("X-IDENTITY-HEADER")
        if not presented:
            return self._refuse("identity_header", 401, "X-IDENTITY-HEADER is required")
        if not broker.msi_header.matches(presented):
            return self._refuse("identity_header", 403, "X-IDENTITY-HEADER is not valid")
        if request.query.get("api-version") != API_VERSION:
            return _fail(400, f"api-version must be {API_VERSION}")
        if not request.query.get("resource", ""):
            return _fail(400, "resource is required")
        return None

    async def token(self, request: web.Request) -> Reply:
        broker = self.broker
        msi = broker.settings.msi
        refused = self._checked(request)
        if refused is not None:
            return refused
        query = request.query
        resource = query["resource"]
        profile = self._profile(query)
        if isinstance(profile, str):
            return _fail(400, profile)
        if _resource_of(resource) != _resource_of(profile.scope):
            return _fail(
                400,
                f"resource {resource[:100]!r} is not this identity's "
                f"({_resource_of(profile.scope)})",
            )
        if restricted(profile):  # SDK callers cannot present a uid or an access key
            return self._refuse("not_allowed", 403, "this identity is not served here")
        entry = broker.cache.entry(profile.name, "aad")
        try:
            token, hit = await entry.get(min_remaining=msi.min_remaining)
        except UpstreamError as e:
            return _fail(e.status, e.message, retry_after(e))
        now = broker.settings.profiles.get(profile.name)  # a reload while this caller waited
        if now is None or restricted(now):
            return self._refuse("not_allowed", 403, "this identity is not served here")
        broker.metrics.count_cache(profile.name, "aad", hit)
        broker.audit.served(
            "msi",
            profile.name,
            "aad",
            identify(request).description,
            hit,
            entry.token_correlation_id,
        )
        return _answer(token, resource, profile)

    async def tenant_token(self, request: web.Request) -> Reply:
        """`GET /msi/tenants/{tenant}/token`: a customer tenant's token for `resource` (any of
        the profile's customer_scopes, without `/.default`), same protocol as /msi/token."""
        broker = self.broker
        refused = self._checked(request)
        if refused is not None:
            return refused
        query = request.query
        resource = query["resource"]
        profile = self._profile(query)
        if isinstance(profile, str):
            return _fail(400, profile)
        if restricted(profile):
            return self._refuse("not_allowed", 403, "this identity is not served here")
        cache = broker.tenants.get(profile.name)
        if cache is None:
            return _fail(400, "this identity serves no customer tenants (customer_tenants)")
        raw = path_param(request, "tenant")
        if not is_tenant(raw):
            return _fail(400, "the tenant must be a tenant id or domain name")
        tenant = raw.lower()
        if not cache.allows_tenant(tenant):
            return _fail(403, "this tenant is not in the identity's customer_tenants")
        wanted = _resource_of(resource)
        scope = next(
            (s for s in profile.customer_scopes if _resource_of(s) == wanted and s.strip()), None
        )
        if scope is None:
            return _fail(400, f"resource {resource[:100]!r} is not in the customer_scopes")
        try:
            token, hit, entry = await cache.get(tenant, scope, broker.settings.msi.min_remaining)
        except UpstreamError as e:
            return _fail(e.status, e.message, retry_after(e))
        broker.metrics.count_cache(profile.name, KIND, hit)
        broker.audit.served_tenant(
            "msi",
            profile.name,
            tenant,
            scope,
            identify(request).description,
            hit,
            entry.token_correlation_id,
        )
        return _answer(token, resource, profile)


def _answer(token: Any, resource: str, profile: ProfileSettings) -> Answer:
    """The managed-identity protocol's answer: `expires_on` as a string of epoch seconds and
    `resource` echoed exactly, as the Azure SDKs expect."""
    body = {
        "access_token": token.value,
        "expires_on": str(token.expires_on),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": profile.client_id,
    }
    return Answer(HEADS[JSON], json.dumps(body).encode())
