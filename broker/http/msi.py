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

from broker.core.errors import UpstreamError
from broker.core.refusals import (
    BadTenant,
    NotAllowed,
    NoTenants,
    Refused,
    ScopeNotAllowed,
    TenantNotAllowed,
    UnknownProfile,
)
from broker.core.resources import resource_of
from broker.core.runtime import Runtime
from broker.core.serve import Customer
from broker.core.tokens.render import JSON
from broker.http.access import refuse
from broker.http.callers import identify
from broker.http.common import HEADERS, NO_STORE, REASON, path_param, retry_after
from broker.http.managed import Asked, not_served, read_query

API_VERSION = "2019-08-01"
ROUTE = "the App Service endpoint (/msi/token)"
# The identity parameters App Service's clients send, and the profile setting each one is
# matched against. IMDS's spellings (clientid, msi_res_id) are refused with a pointer here.
SELECTORS = {
    "client_id": "client_id",
    "object_id": "object_id",
    "principal_id": "object_id",
    "mi_res_id": "resource_id",
    "resource_id": "resource_id",
}
_HEADERS = {"Content-Type": "application/json", **NO_STORE}


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
    BadTenant: (400, "the tenant must be a tenant id or domain name"),
    TenantNotAllowed: (403, "this tenant is not in the identity's customer_tenants"),
}


def _no_tenants(profile: str, named: bool) -> str:
    """Why a customer tenant's token is refused by a profile without customer_tenants: most
    often the request named no identity (ManagedIdentityCredential() ignores AZURE_CLIENT_ID,
    which msi-env sets), so [msi] profile answered."""
    if not named:
        return (
            f"the request names no client_id, so [msi] profile {profile!r} answered, and it "
            "has no customer_tenants. Name the identity in the request: DefaultAzureCredential "
            "sends AZURE_CLIENT_ID (which pc-token-broker msi-env PROFILE --tenant T sets); "
            "ManagedIdentityCredential ignores it: pass "
            "ManagedIdentityCredential(client_id=os.environ['AZURE_CLIENT_ID'])"
        )
    return (
        f"the identity this request names (profile {profile!r}) has no customer_tenants: name "
        "the client id of a profile whose customer_tenants lists this tenant, or add "
        "customer_tenants and customer_scopes to this profile"
    )


class MsiHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        return refuse(self.broker.metrics, reason, _fail(status, message, reason=reason))

    def _refusal(self, e: Refused, asked: Asked, customer: bool, named: bool) -> web.Response:
        if isinstance(e, UnknownProfile | NotAllowed):  # removed or restricted: one answer
            return self._refuse("not_allowed", 403, "this identity is not served here")
        if isinstance(e, ScopeNotAllowed):
            if customer:
                return _fail(
                    400, f"resource {asked.resource[:100]!r} is not in the customer_scopes"
                )
            return _fail(400, not_served(asked.profile, asked.resource))
        if isinstance(e, NoTenants):
            return _fail(400, _no_tenants(asked.profile.name, named))
        status, message = _REFUSALS.get(type(e), (e.status, e.message))
        retry = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return _fail(status, message, retry)

    def _checked(self, runtime: Runtime, request: web.Request) -> Asked | web.Response:
        """The endpoint is on, the origin is local, the identity header is right, the query
        names the api-version, a resource and nothing this route does not know; else the
        refusal."""
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
        if request.query.getall("api-version", []) != [API_VERSION]:
            return _fail(
                400, f"api-version must be {API_VERSION}, the one version this route accepts"
            )
        asked = read_query(runtime, request.query, SELECTORS, ROUTE)
        return _fail(400, asked) if isinstance(asked, str) else asked

    async def token(self, request: web.Request) -> web.Response:
        """`GET /msi/token`: the profile's own Azure AD token for `resource` (its scope or one
        of its `scopes`)."""
        runtime = self.broker.runtime
        asked = self._checked(runtime, request)
        if isinstance(asked, web.Response):
            return asked
        assert runtime.settings.msi is not None
        target = asked.own(runtime.settings.msi.min_remaining)
        return await self._serve(request, asked, target)

    async def tenant_token(self, request: web.Request) -> web.Response:
        """`GET /msi/tenants/{tenant}/token`: a customer tenant's token for `resource` (any of
        the profile's customer_scopes, without `/.default`), same protocol as /msi/token."""
        runtime = self.broker.runtime
        asked = self._checked(runtime, request)
        if isinstance(asked, web.Response):
            return asked
        wanted = resource_of(asked.resource)
        scope = next(
            (s for s in asked.profile.customer_scopes if resource_of(s) == wanted and s.strip()),
            "",
        )  # none: refused by the desk, after the tenant's own checks
        assert runtime.settings.msi is not None
        target = Customer(path_param(request, "tenant"), scope, runtime.settings.msi.min_remaining)
        return await self._serve(request, asked, target)

    async def _serve(self, request: web.Request, asked: Asked, target: Any) -> web.Response:
        caller = identify(request).sdk
        try:
            served = await self.broker.desk.serve(
                caller, asked.profile.name, target, refused=asked.refused
            )
        except Refused as e:
            named = any(key in request.query for key in SELECTORS)
            return self._refusal(e, asked, isinstance(target, Customer), named)
        except UpstreamError as e:
            return _fail(e.status, e.message, retry_after(e))
        return _answer(served.token, asked.resource, served.profile.client_id)


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
