"""One small class per kind of Azure AD credential that needs no more than its grant: a client
secret, a certificate's client assertion, a federated token file; and a static token file
(no Azure AD call at all). The refresh_token grant is in `refresh_token.py`.

A credential never owns an HTTP client; the upstream client is passed in. Files are read when
needed (they rotate) and their contents held only as long as a request needs them.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, ClassVar

import jwt

from broker.config.pem import load_certificate_key
from broker.config.settings import ProfileSettings
from broker.core.credentials.base import CredentialBase, read_file, read_off_loop
from broker.core.errors import LocalCredentialFailed
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds, Upstream
from broker.core.upstream.streams import load_json

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 600  # s: Azure AD accepts client assertions valid for up to an hour


class AzureADGrant(CredentialBase):
    """Shared by the credentials that post a grant to the Azure AD token endpoint."""

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        raise NotImplementedError

    def form(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        """The whole token request for `scope` at `token_url` (the profile's own tenant, or a
        customer's: one credential serves every tenant its consent covers)."""
        grant = self.grant(upstream, token_url, scope)
        return {"client_id": self.profile.client_id, "scope": scope, **grant}

    async def post(self, upstream: Upstream, ids: RefreshIds) -> tuple[Token, dict[str, Any]]:
        p = self.profile
        form = self.form(upstream, p.token_url, p.scope)
        return await upstream.azure_ad_token(p.token_url, form, timeout=p.upstream_timeout, ids=ids)

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        await self.before(upstream)
        token, body = await self.post(upstream, ids)
        await self.answered(upstream, body, ids)
        return token


class ClientSecretCredential(AzureADGrant):
    """client_credentials with a client secret."""

    kind = "client_secret"

    def identity(self) -> str:
        assert self.profile.client_secret is not None  # config guarantees it
        return self.profile.client_secret.reveal()

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        assert self.profile.client_secret is not None  # config guarantees it
        return {
            "grant_type": "client_credentials",
            "client_secret": self.profile.client_secret.reveal(),
        }


class CertificateCredential(AzureADGrant):
    """client_credentials with a client assertion JWT signed by the app's certificate key."""

    kind = "certificate"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        super().__init__(profile, log)
        assert profile.certificate_pem is not None  # config validated the file
        password = profile.certificate_password
        self._key = load_certificate_key(
            profile.certificate_pem.reveal().encode("ascii"),
            password.reveal().encode() if password else None,
        )

    def identity(self) -> str:
        return self._key.thumbprint_s256

    def assertion(self, now: float, token_url: str | None = None) -> str:
        p = self.profile
        claims = {
            "aud": token_url or p.token_url,
            "iss": p.client_id,
            "sub": p.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": int(now),
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        return jwt.encode(
            claims,
            self._key.key,
            algorithm=p.signing_algorithm,
            headers={"x5t#S256": self._key.thumbprint_s256},
        )

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(upstream.clock.time(), token_url),
        }


class FederatedTokenCredential(AzureADGrant):
    """client_credentials with a federated token (Kubernetes workload identity) as the client
    assertion. The file is re-read on every request: the kubelet rotates it."""

    kind = "federated_token_file"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        super().__init__(profile, log)
        self._assertion: str | None = None  # read by before(), off the event loop

    async def before(self, upstream: Upstream) -> None:
        assert self.profile.federated_token_file is not None
        self._assertion = await read_off_loop(
            self.profile.federated_token_file, "federated token file"
        )

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        assert self.profile.federated_token_file is not None
        assertion = self._assertion or read_file(
            self.profile.federated_token_file, "federated token file"
        )
        upstream.redactor.add(assertion)
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }


class StaticTokenCredential(CredentialBase):
    """An Azure AD token another system places in a file: no Azure AD call at all. The file
    holds the bare token (a JWT with `exp`) or a JSON token answer; it is parsed again only
    when it changes (inode, size or mtime)."""

    kind: ClassVar[str] = "static_token_file"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        super().__init__(profile, log)
        self._stamp: tuple[int, int, int] | None = None
        self._token: Token | None = None

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        path = self.profile.static_token_file
        assert path is not None
        try:
            st = os.stat(path)
        except OSError as e:
            raise LocalCredentialFailed(
                f"cannot read the static token file {path}: {e.strerror}", endpoint="aad"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp and self._token is not None:
            return self._token
        text = await read_off_loop(path, "static token file")
        try:
            body = load_json(text) if text.startswith("{") else {"access_token": text}
            token = upstream.received(body)
        except ValueError as e:  # not JSON, or TokenRejected
            raise LocalCredentialFailed(
                f"the static token file {path} holds no usable token: {e}", endpoint="aad"
            ) from None
        self._stamp, self._token = stamp, token
        return token

    def form(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        """No grant to post (configuration refuses customer tenants for this kind)."""
        raise LocalCredentialFailed(
            "a static token file has no grant to post to another tenant", endpoint="aad"
        )
