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
from broker.config.settings import ProfileSettings
from broker.http.callers import identify, restricted
from broker.http.common import NO_STORE, retry_after

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


def _fail(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"statusCode": status, "message": message}).encode(),
        headers={**_HEADERS, **(headers or {})},
    )


class MsiHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        self.broker.metrics.rejected.labels(reason).inc()
        return _fail(status, message)

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

    async def token(self, request: web.Request) -> web.Response:
        broker = self.broker
        msi = broker.settings.msi
        if msi is None or broker.msi_header is None:
            return _fail(404, "the managed-identity endpoint is not configured ([msi])")
        rejection = broker.guard.origin(request.headers)
        if rejection is not None:
            return self._refuse(rejection.reason, rejection.status, rejection.message)
        presented = request.headers.get("X-IDENTITY-HEADER")
        if not presented:
            return self._refuse("identity_header", 401, "X-IDENTITY-HEADER is required")
        if not broker.msi_header.matches(presented):
            return self._refuse("identity_header", 403, "X-IDENTITY-HEADER is not valid")
        query = request.query
        if query.get("api-version") != API_VERSION:
            return _fail(400, f"api-version must be {API_VERSION}")
        resource = query.get("resource", "")
        if not resource:
            return _fail(400, "resource is required")
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
        broker.metrics.count_cache(profile.name, "aad", hit)
        broker.audit.served(
            "msi",
            profile.name,
            "aad",
            identify(request).description,
            hit,
            entry.token_correlation_id,
        )
        body = {
            "access_token": token.value,
            "expires_on": str(token.expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": profile.client_id,
        }
        return web.Response(body=json.dumps(body).encode(), headers=_HEADERS)
