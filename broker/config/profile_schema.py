"""The keys of a profile, as [defaults] and each [profiles.NAME] table may set them, and the
credential kinds: one model per `credential`, joined as a union discriminated by that key.

A table is checked key by key against `ProfileKeys` (every key, all optional: [defaults] may set
any of them). The profile a name stands for is [defaults] merged with its own table; that merged
profile is validated as `Profile`, where each credential kind accepts only its own keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from annotated_types import MinLen
from pydantic import AfterValidator, Field, StrictStr

from broker.config.clouds import CLOUDS
from broker.config.fields import (
    Flag,
    GroupIds,
    Number,
    SecretText,
    Section,
    Text,
    Url,
    UserIds,
    Whole,
    fail,
    setting,
)

_PUBLIC = CLOUDS["public"]  # the defaults below: the public cloud's endpoints

# A customer tenant: its GUID or one of its domains. Never "common", "organizations" or
# "consumers" (they are not tenants: Azure AD would pick the user's home tenant).
_TENANT = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]",
)
_SCOPE = re.compile(r"[\x21-\x7e]{1,512}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_tenant(text: str) -> bool:
    """Whether `text` names a tenant (a GUID or a domain name, any case, at most 253 chars)."""
    return len(text) <= 253 and _TENANT.fullmatch(text.lower()) is not None


def _tenant(text: str) -> str:
    if text != "*" and not is_tenant(text):
        fail(f"{text[:80]!r} is not a tenant id or domain")
    return text


def _any_tenant_alone(tenants: tuple[str, ...]) -> tuple[str, ...]:
    if "*" in tenants and len(tenants) > 1:
        fail('"*" (any tenant) stands alone')
    return tenants


def _scope(text: str) -> str:
    if not _SCOPE.fullmatch(text):
        fail(f"{text[:80]!r} is not a scope (one, no spaces)")
    return text


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        fail("profile names are letters, digits, '_', '.', '-' (at most 64)")
    return text


Tenants = Annotated[
    tuple[Annotated[StrictStr, AfterValidator(_tenant)], ...],
    MinLen(1),
    AfterValidator(_any_tenant_alone),
]
Scopes = Annotated[tuple[Annotated[StrictStr, AfterValidator(_scope)], ...], MinLen(1)]
ProfileName = Annotated[str, AfterValidator(_name)]
Cloud = Literal["public", "usgov", "china"]
assert set(get_args(Cloud)) == set(CLOUDS), "clouds.py and the schema name the same clouds"
CredentialName = Literal[
    "client_secret", "certificate", "refresh_token", "federated_token_file", "static_token_file"
]


class ProfileCommon(Section):
    """The keys every credential kind has (`credential` itself: narrowed by each kind)."""

    tenant_id: Text | None = setting(
        None, "the partner tenant (name or GUID); optional only for static_token_file"
    )
    client_id: Text | None = setting(
        None, "the app registration's client id; optional only for static_token_file"
    )
    credential: CredentialName = setting(
        "client_secret", "how the Azure AD token is obtained (each kind has its own keys)"
    )  # each kind of `Profile` narrows it to its own name
    cloud: Cloud = setting(
        "public", "sets authority, generatetoken_url and scope together; keys set still win"
    )
    generatetoken_url: Url = setting(
        _PUBLIC["generatetoken_url"], "Partner Center's token exchange (default: the cloud's)"
    )
    authority: Url = setting(_PUBLIC["authority"], "the Azure AD authority (default: the cloud's)")
    scope: Text = setting(_PUBLIC["scope"], "the Azure AD scope asked for (default: the cloud's)")
    refresh_ahead: Number = setting(
        0.25, "refresh when this fraction of a token's lifetime remains", ge=0, le=0.5
    )
    min_refresh_margin: Number = setting(
        60.0, "but at least this many seconds before expiry (capped at half the lifetime)",
        ge=0, le=86400,
    )  # fmt: skip
    min_remaining: Number = setting(
        30.0, "a token is served only while at least this many seconds remain", ge=0, le=3600
    )
    upstream_timeout: Number = setting(
        10.0, "seconds per upstream call; also the longest a caller waits", ge=0.1, le=300
    )
    warm: Flag = setting(True, "fetch at start-up and keep refreshed even with no callers")
    allow_insecure_upstream: Flag = setting(
        False, "allow plain http:// to a non-loopback authority or generatetoken_url"
    )
    allowed_uids: UserIds | None = setting(
        None, "unix-socket callers allowed, by uid or user name (default: any caller)"
    )
    allowed_gids: GroupIds | None = setting(
        None, "unix-socket callers allowed, by gid or group name, supplementary groups too"
    )
    access_key: SecretText | None = setting(
        None, "a key callers must send as X-Broker-Key (inline; or access_key_file / _env)"
    )
    access_key_file: Text | None = setting(None, "a file holding the access key (${VAR} expanded)")
    access_key_env: Text | None = setting(None, "an environment variable holding the access key")
    object_id: Text | None = setting(None, "the service principal's object id, for /msi callers")
    resource_id: Text | None = setting(None, "an Azure resource id naming it, for /msi callers")
    scopes: Scopes | None = setting(
        None,
        "more resources of the profile's own tenant it serves (Azure AD tokens from its own "
        'credential), e.g. "https://management.azure.com/.default", '
        '"https://graph.microsoft.com/.default": asked by /msi/token?resource=, the IMDS '
        "route, /v1/token/{profile}?scope= and `token PROFILE --scope`; ARM's two URIs "
        "(management.azure.com, management.core.windows.net) count as one",
    )
    customer_tenants: Tenants | None = setting(
        None, 'customer tenants served (ids or domains, or ["*"]); absent: none'
    )
    customer_scopes: Scopes | None = setting(
        None, "the scopes callers may ask for in customer tenants; the first is the default"
    )
    max_customer_tokens: Whole = setting(
        50000, "cached (tenant, scope) tokens at most", ge=1, le=10_000_000
    )
    upstream_concurrency: Whole = setting(
        16, "Azure AD calls in flight for customer tenants; others queue", ge=1, le=1024
    )
    customer_fetch_rate: Number = setting(
        50.0,
        "new (tenant, scope) entries fetched per second, sustained; beyond it callers get 429",
        ge=0.01, le=100_000,
    )  # fmt: skip
    customer_fetch_burst: Whole = setting(
        500, "new (tenant, scope) entries fetched at once before customer_fetch_rate applies",
        ge=1, le=1_000_000,
    )  # fmt: skip


# -- each credential's own keys ----------------------------------------------------------------


class ClientSecretKeys(Section):
    client_secret: SecretText | None = setting(
        None, "the client secret inline (or client_secret_file / client_secret_env)"
    )
    client_secret_file: Text | None = setting(
        None, "a file holding only the client secret (${VAR} expanded)"
    )
    client_secret_env: Text | None = setting(
        None, "an environment variable holding the client secret"
    )


class CertificateKeys(Section):
    certificate_file: Text | None = setting(
        None, "one PEM file with the RSA key and its certificate (required; ${VAR} expanded)"
    )
    certificate_password_file: Text | None = setting(
        None, "a file holding the key's password (an encrypted key only)"
    )
    certificate_password_env: Text | None = setting(
        None, "an environment variable holding the key's password"
    )
    signing_algorithm: Literal["RS256", "PS256"] = setting(
        "RS256", "how the client assertion is signed"
    )


class RefreshTokenKeys(Section):
    refresh_token_file: Text | None = setting(
        None, "the refresh token's file (required; read and written back, so writable)"
    )
    keep_alive_days: Number = setting(
        7.0,
        "days between redemptions of the refresh token of an idle profile, so it never "
        "reaches Azure AD's 90-day inactivity limit (AADSTS700082)",
        ge=0.01, le=80,
    )  # fmt: skip


class FederatedTokenKeys(Section):
    federated_token_file: Text | None = setting(
        None, "the federated token (client assertion), re-read on every request (required)"
    )


class StaticTokenKeys(Section):
    static_token_file: Text | None = setting(
        None, "an Azure AD token another system places there (required)"
    )


class ProfileKeys(
    StaticTokenKeys,
    FederatedTokenKeys,
    RefreshTokenKeys,
    CertificateKeys,
    ClientSecretKeys,
    ProfileCommon,
):
    """A [defaults] or [profiles.NAME] table: every profile key, each optional."""


# -- the merged profile: one model per credential ----------------------------------------------


class ClientSecretProfile(ClientSecretKeys, ProfileCommon):
    credential: Literal["client_secret"]


class CertificateProfile(CertificateKeys, ProfileCommon):
    credential: Literal["certificate"]


class RefreshTokenProfile(ClientSecretKeys, RefreshTokenKeys, ProfileCommon):
    credential: Literal["refresh_token"]  # a confidential app adds its client secret


class FederatedTokenProfile(FederatedTokenKeys, ProfileCommon):
    credential: Literal["federated_token_file"]


class StaticTokenProfile(StaticTokenKeys, ProfileCommon):
    credential: Literal["static_token_file"]


CREDENTIAL_MODELS: tuple[type[ProfileCommon], ...] = (
    ClientSecretProfile,
    CertificateProfile,
    RefreshTokenProfile,
    FederatedTokenProfile,
    StaticTokenProfile,
)
Profile = Annotated[
    ClientSecretProfile
    | CertificateProfile
    | RefreshTokenProfile
    | FederatedTokenProfile
    | StaticTokenProfile,
    Field(discriminator="credential"),
]

CREDENTIALS: tuple[str, ...] = get_args(CredentialName)
_COMMON = frozenset(ProfileCommon.model_fields)
# The keys each credential uses; set in a profile for another credential, they are errors.
CREDENTIAL_KEYS: dict[str, frozenset[str]] = {
    get_args(kind.model_fields["credential"].annotation)[0]: frozenset(kind.model_fields) - _COMMON
    for kind in CREDENTIAL_MODELS
}
ALL_CREDENTIAL_KEYS = frozenset().union(*CREDENTIAL_KEYS.values())
PROFILE_KEYS = frozenset(ProfileKeys.model_fields)
