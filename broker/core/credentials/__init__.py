"""Azure AD credentials: one small class per kind, one interface (`Credential`).

`acquire(upstream, ids)` returns an Azure AD token for the profile's scope; `before`, `form`
and `answered` let the customer-tenant fetch post the same grant to any tenant; `close` and
`mfa` are for the service. Every kind has every member, so no caller needs `getattr`.

- `base.py`: the protocol, the members a kind may leave empty, reading credential files.
- `grants.py`: client secret, certificate, federated token file, static token file.
- `refresh_token.py`: the refresh_token grant and `RotatingRefreshToken`, the refresh token
  Azure AD rotates (written back to its file, shared with the fleet, newest wins; a token
  placed in the file meanwhile wins over a rotation not yet written).
- `refresh_token_text.py`: whether a string is a usable refresh token; whether a sign-in had
  MFA (the `amr` claim).
"""

from __future__ import annotations

from typing import Any

from broker.config.settings import ProfileSettings
from broker.core.cache.shared import SharedCache
from broker.core.credentials.base import FILE_TIMEOUT, Credential, CredentialBase
from broker.core.credentials.grants import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    AzureADGrant,
    CertificateCredential,
    ClientSecretCredential,
    FederatedTokenCredential,
    StaticTokenCredential,
)
from broker.core.credentials.refresh_token import (
    WRITE_BACK_EVERY,
    RefreshTokenCredential,
    RotatingRefreshToken,
    shows_mfa,
)

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "CREDENTIALS",
    "FILE_TIMEOUT",
    "WRITE_BACK_EVERY",
    "AzureADGrant",
    "CertificateCredential",
    "ClientSecretCredential",
    "Credential",
    "CredentialBase",
    "FederatedTokenCredential",
    "RefreshTokenCredential",
    "RotatingRefreshToken",
    "StaticTokenCredential",
    "make_credential",
    "shows_mfa",
]

CREDENTIALS: dict[str, type[CredentialBase]] = {
    c.kind: c
    for c in (
        ClientSecretCredential,
        CertificateCredential,
        FederatedTokenCredential,
        RefreshTokenCredential,
        StaticTokenCredential,
    )
}


def make_credential(
    profile: ProfileSettings, log: Any, shared: SharedCache | None = None
) -> Credential:
    """The profile's credential; `shared` (a SharedCache) lets a refresh token rotate fleet-wide."""
    log = log.bind(profile=profile.name)
    if profile.credential == "refresh_token":
        return RefreshTokenCredential(profile, log, shared)
    return CREDENTIALS[profile.credential](profile, log)
