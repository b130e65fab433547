"""Which resources a profile serves from its own credential, and how each asked spelling is
requested. Pure functions: no I/O.

A profile serves its own `scope` (the `aad` entry) and the resources listed in `scopes`, all of
its own tenant. A resource is compared without `/.default`, trailing slashes or case; ARM's two
identifier URIs count as one resource. The token is requested for the spelling asked (ARM's
`management.core.windows.net` or `management.azure.com`, with or without its trailing slash),
lower-cased, so each resource has at most two spellings (ARM four): a bounded set of entries.

Client capabilities (`xms_cc`): only `cp1` (Continuous Access Evaluation) means anything to
Azure AD; it is asked for with the `claims` request parameter, and a CAE token may live up to
28 hours.
"""

from __future__ import annotations

import json

from broker.config.settings import ProfileSettings

ARM = ("https://management.azure.com", "https://management.core.windows.net")
# What Azure AD is sent for a caller that announced `cp1` (MSAL sends the same).
CP1_CLAIMS = json.dumps({"access_token": {"xms_cc": {"values": ["cp1"]}}}, separators=(",", ":"))
CAE_MAX_LIFETIME = 28 * 3600.0  # s: Azure AD's longest CAE token; plain tokens keep 24 h
MAX_CAPABILITIES = 256  # characters of xms_cc


def resource_of(scope: str) -> str:
    """A resource or scope as compared: without `/.default`, trailing slashes or case."""
    return scope.strip().removesuffix("/.default").rstrip("/").lower()


def canonical(scope: str) -> str:
    """`resource_of`, with ARM's two URIs as one."""
    resource = resource_of(scope)
    return ARM[0] if resource in ARM else resource


def same_resource(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def spelled(asked: str) -> str:
    """The Azure AD scope a token is requested for, in the spelling asked: lower-cased,
    `/.default` appended to the resource (so `https://management.core.windows.net/` asks
    `https://management.core.windows.net//.default`, as azure-cli and MSAL do)."""
    text = asked.strip().lower()
    if text.endswith("/.default"):
        text = text.removesuffix("/.default")
    slash = "/" if text.endswith("/") else ""
    return text.rstrip("/") + slash + "/.default"


def allows(profile: ProfileSettings, scope: str) -> bool:
    """Whether `scope` is the profile's own or one of its `scopes`."""
    wanted = canonical(scope)
    return any(canonical(s) == wanted for s in (profile.scope, *profile.scopes))


def capabilities(raw: str) -> frozenset[str] | None:
    """`xms_cc`: comma-separated, case-insensitive; the ones Azure AD knows (`cp1`), or None
    when the value is malformed (too long, not printable ASCII)."""
    if len(raw) > MAX_CAPABILITIES or not (raw.isascii() and raw.isprintable()):
        return None
    given = {c.strip().lower() for c in raw.split(",")}
    return frozenset(given & {"cp1"})
