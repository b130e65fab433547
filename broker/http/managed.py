"""What the two managed-identity routes share: reading the query (the identity a caller
selects, the resource, `token_sha256_to_refresh`, `xms_cc`), strictly: a parameter a route
does not know is a 400 naming the ones it knows, never a silent default identity.

`/msi/token` speaks App Service's spellings, `/metadata/identity/oauth2/token` IMDS's; each
route passes its own table of selectors (parameter → the profile setting it is matched
against).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from broker.config.settings import ProfileSettings
from broker.core.resources import capabilities, resource_of, spelled
from broker.core.runtime import Runtime
from broker.core.serve import Own

MAX_RESOURCE = 2048  # characters: a resource URI, with room to spare
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
REFRESH = "token_sha256_to_refresh"
CAPABILITIES = "xms_cc"

# Other spellings of a selector that a caller may send to the wrong route: named in the 400.
_FOREIGN = {
    "clientid": "client_id",
    "msi_res_id": "mi_res_id",
    "mi_res_id": "msi_res_id",
    "principal_id": "object_id",
    "resource_id": "mi_res_id",
}


@dataclass(frozen=True, slots=True)
class Asked:
    """A managed-identity request, read: who, what, and the two optional hints."""

    profile: ProfileSettings
    resource: str  # as sent: echoed exactly
    refused: str | None  # token_sha256_to_refresh, lower-case hex
    cae: bool  # the caller announced client capability cp1

    def own(self, min_remaining: float) -> Own:
        return Own("aad", min_remaining, scope=spelled(self.resource), cae=self.cae)


def one_resource(resource: str) -> bool:
    """One resource URI: printable, no whitespace anywhere (`A%20B` is two resources, and
    only an allowed resource is ever answered or echoed), bounded."""
    return (
        0 < len(resource) <= MAX_RESOURCE
        and resource.isprintable()
        and not any(c.isspace() for c in resource)
        and bool(resource_of(resource))
    )


def read_query(
    runtime: Runtime,
    query: Mapping[str, str],
    selectors: Mapping[str, str],
    route: str,
) -> Asked | str:
    """The request as `Asked`, or why it cannot be served (the 400's message). `query` has
    been checked for api-version already; each parameter must appear at most once."""
    known = {"api-version", "resource", REFRESH, CAPABILITIES, *selectors}
    for key in query:
        if key not in known:
            return _unknown(key, selectors, route)
        if len(query.getall(key)) > 1:  # type: ignore[attr-defined]
            return f"give {key[:40]} once"
    resource = query.get("resource", "")
    if not resource:
        return "resource is required"
    if not one_resource(resource):
        return "resource must be one resource URI, without spaces"
    refused = query.get(REFRESH)
    if refused is not None and not _DIGEST.fullmatch(refused):
        return f"{REFRESH} must be the SHA-256 of the token, 64 hexadecimal digits"
    caps = capabilities(query.get(CAPABILITIES, ""))
    if caps is None:
        return f"{CAPABILITIES} must be a short comma-separated list, such as cp1"
    profile = select(runtime, query, selectors)
    if isinstance(profile, str):
        return profile
    return Asked(profile, resource, refused and refused.lower(), "cp1" in caps)


def _unknown(key: str, selectors: Mapping[str, str], route: str) -> str:
    names = ", ".join(selectors)
    shown = key[:40]
    other = _FOREIGN.get(key.lower())
    if other in selectors:
        return f"{route} does not know {shown!r}: select the identity with {other} (or {names})"
    return (
        f"{route} does not know the parameter {shown!r}; it knows api-version, resource, "
        f"{names}, {REFRESH}, {CAPABILITIES}"
    )


def select(
    runtime: Runtime, query: Mapping[str, str], selectors: Mapping[str, str]
) -> ProfileSettings | str:
    """The profile the request names (or [msi] profile), or why none fits."""
    msi = runtime.settings.msi
    profiles = runtime.settings.profiles
    assert msi is not None
    given = [(k, query[k]) for k in selectors if k in query]
    if len(given) > 1:
        return f"give at most one of {', '.join(selectors)}"
    if not given:
        return profiles[msi.profile]
    param, value = given[0]
    setting = selectors[param]
    matches = [
        p
        for p in profiles.values()
        if getattr(p, setting) and getattr(p, setting).lower() == value.lower()
    ]
    if len(matches) > 1:  # never guess which identity a caller meant
        names = ", ".join(sorted(p.name for p in matches))
        by_resource = next(k for k, v in selectors.items() if v == "resource_id")
        return (
            f"{param} {value[:64]!r} matches several identities (profiles {names}): "
            f"select one by object_id or {by_resource} instead"
        )
    if matches:
        return matches[0]
    return f"no identity with {param} {value[:64]!r} is configured"


def not_served(profile: ProfileSettings, resource: str) -> str:
    """The 400 for a resource the identity does not serve, naming those it does."""
    served = ", ".join(resource_of(s) for s in (profile.scope, *profile.scopes))
    return (
        f"resource {resource[:100]!r} is not this identity's ({served}); list it in the "
        f"profile's scopes to serve it"
    )
