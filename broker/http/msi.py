"""`GET /msi/token` and `GET /msi/tenants/{tenant}/token`: the App Service managed-identity
protocol, so the Azure SDKs' ManagedIdentityCredential and DefaultAzureCredential fetch the
profile's Azure AD token (or a customer tenant's) from the broker unchanged (IDENTITY_ENDPOINT
and IDENTITY_HEADER set). The handlers parse, ask `broker.core.serve` and render; SDK callers
cannot present a uid or an access key, so a restricted profile is refused, also when a reload
restricts it while the caller waits.

Answers as the SDKs parse them: `expires_on` is whole epoch seconds as a string of digits, and
`resource` echoes exactly what the caller sent (the async SDK caches under that key). Errors
are `{"statusCode", "message"}`, which the SDKs surface.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.config.settings import ProfileSettings
from broker.core.errors import UpstreamError
from broker.core.runtime import Runtime
from broker.core.serve import (
    BadTenant,
    Customer,
    NotAllowed,
    NoTenants,
    Own,
    Refused,
    ScopeNotAllowed,
    TenantNotAllowed,
    UnknownProfile,
)
from broker.core.tokens.render import JSON
from broker.http.access import refuse
from broker.http.callers import identify
from broker.http.common import HEADERS, NO_STORE, REASON, path_param, retry_after

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


MAX_RESOURCE = 2048  # characters: a resource URI, with room to spare


def _resource_of(scope: str) -> str:
    """A resource or scope as compared: without `/.default`, a trailing slash or case."""
    return scope.strip().removesuffix("/.default").rstrip("/").lower()


def _one_resource(resource: str) -> bool:
    """One resource URI: printable, no whitespace anywhere (`A%20B` is two resources, and
    only an allowed resource is ever answered or echoed), bounded."""
    return (
        0 < len(resource) <= MAX_RESOURCE
        and resource.isprintable()
        and not any(c.isspace() for c in resource)
        and bool(_resource_of(resource))
    )


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


# How the desk's refusals read in this protocol: (status, message).
_REFUSALS: dict[type[Refused], tuple[int, str]] = {
    NoTenants: (400, "this identity serves no customer tenants (customer_tenants)"),
    BadTenant: (400, "the tenant must be a tenant id or domain name"),
    TenantNotAllowed: (403, "this tenant is not in the identity's customer_tenants"),
}


class MsiHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        return refuse(self.broker.metrics, reason, _fail(status, message, reason=reason))

    def _refusal(self, e: Refused, resource: str) -> web.Response:
        if isinstance(e, UnknownProfile | NotAllowed):  # removed or restricted: one answer
            return self._refuse("not_allowed", 403, "this identity is not served here")
        if isinstance(e, ScopeNotAllowed):
            return _fail(400, f"resource {resource[:100]!r} is not in the customer_scopes")
        status, message = _REFUSALS.get(type(e), (e.status, e.message))
        return _fail(status, message)

    def _profile(self, runtime: Runtime, query: Any) -> ProfileSettings | str:
        """The profile the request names (or the default one), or why none fits."""
        msi = runtime.settings.msi
        profiles = runtime.settings.profiles
        assert msi is not None
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

    def _checked(self, runtime: Runtime, request: web.Request) -> web.Response | None:
        """The endpoint is on, the origin is local, the identity header is right, the query
        names the api-version and a resource; else the refusal."""
        if runtime.settings.msi is None or runtime.msi_header is None:
            return _fail(404, "the managed-identity endpoint is not configured ([msi])")
        rejection = runtime.guard.origin(request.headers, request.raw_path)
        if rejection is not None:
            return self._refuse(rejection.reason, rejection.status, rejection.message)
        presented = request.headers.get("X-IDENTITY-HEADER")
        if not presented:
            return self._refuse("identity_header", 401, "X-IDENTITY-HEADER is required")
        if not runtime.msi_header.matches(presented):
            return self._refuse("identity_header", 403, "X-IDENTITY-HEADER is not valid")
        if request.query.get("api-version") != API_VERSION:
            return _fail(400, f"api-version must be {API_VERSION}")
        resource = request.query.get("resource", "")
        if not resource:
            return _fail(400, "resource is required")
        if not _one_resource(resource):
            return _fail(400, "resource must be one resource URI, without spaces")
        return None

    async def token(self, request: web.Request) -> web.Response:
        """`GET /msi/token`: the profile's own Azure AD token for `resource`."""
        runtime = self.broker.runtime
        refused = self._checked(runtime, request)
        if refused is not None:
            return refused
        resource = request.query["resource"]
        profile = self._profile(runtime, request.query)
        if isinstance(profile, str):
            return _fail(400, profile)
        if _resource_of(resource) != _resource_of(profile.scope):
            return _fail(
                400,
                f"resource {resource[:100]!r} is not this identity's "
                f"({_resource_of(profile.scope)})",
            )
        assert runtime.settings.msi is not None
        target = Own("aad", runtime.settings.msi.min_remaining)
        return await self._serve(request, profile, target, resource)

    async def tenant_token(self, request: web.Request) -> web.Response:
        """`GET /msi/tenants/{tenant}/token`: a customer tenant's token for `resource` (any of
        the profile's customer_scopes, without `/.default`), same protocol as /msi/token."""
        runtime = self.broker.runtime
        refused = self._checked(runtime, request)
        if refused is not None:
            return refused
        resource = request.query["resource"]
        profile = self._profile(runtime, request.query)
        if isinstance(profile, str):
            return _fail(400, profile)
        wanted = _resource_of(resource)
        scope = next(
            (s for s in profile.customer_scopes if _resource_of(s) == wanted and s.strip()), ""
        )  # none: refused by the desk, after the tenant's own checks
        assert runtime.settings.msi is not None
        target = Customer(path_param(request, "tenant"), scope, runtime.settings.msi.min_remaining)
        return await self._serve(request, profile, target, resource)

    async def _serve(
        self, request: web.Request, profile: ProfileSettings, target: Any, resource: str
    ) -> web.Response:
        caller = identify(request).sdk
        try:
            served = await self.broker.desk.serve(caller, profile.name, target)
        except Refused as e:
            return self._refusal(e, resource)
        except UpstreamError as e:
            return _fail(e.status, e.message, retry_after(e))
        return _answer(served.token, resource, served.profile.client_id)


def _answer(token: Any, resource: str, client_id: str) -> web.Response:
    """The managed-identity protocol's answer: `expires_on` as a string of epoch seconds and
    `resource` echoed exactly, as the Azure SDKs expect."""
    body = {
        "access_token": token.value,
        "expires_on": str(token.expires_on),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": client_id,
    }
    return web.Response(body=json.dumps(body).encode(), headers=HEADERS[JSON])
