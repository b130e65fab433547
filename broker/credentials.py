"""Azure AD credentials: one small class per kind, one interface.

`acquire(upstream, ids)` returns an Azure AD token for the profile's scope. A credential never
owns an HTTP client; the upstream client is passed in.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from .config import ProfileSettings
from .tokens import Token
from .upstream import RefreshIds, Upstream


class Credential(Protocol):
    kind: ClassVar[str]

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token: ...


class _AzureADCredential:
    """Shared by the credentials that post a grant to the Azure AD token endpoint."""

    kind: ClassVar[str] = ""

    def __init__(self, profile: ProfileSettings) -> None:
        self.profile = profile

    def grant(self) -> dict[str, str]:
        raise NotImplementedError

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        p = self.profile
        form = {"client_id": p.client_id, "scope": p.scope, **self.grant()}
        token, _ = await upstream.azure_ad_token(
            p.token_url, form, timeout=p.upstream_timeout, ids=ids
        )
        return token


class ClientSecretCredential(_AzureADCredential):
    """client_credentials with a client secret."""

    kind = "client_secret"

    def grant(self) -> dict[str, str]:
        assert self.profile.client_secret is not None  # config guarantees it
        return {
            "grant_type": "client_credentials",
            "client_secret": self.profile.client_secret.reveal(),
        }


KINDS: dict[str, type[_AzureADCredential]] = {c.kind: c for c in (ClientSecretCredential,)}


def make_credential(profile: ProfileSettings) -> Credential:
    return KINDS[profile.credential](profile)
