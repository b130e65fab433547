"""The fleet's published format: what a token is shared under (`shared_key`), the Redis key
named from it (`Sealer.name`) and the sealed value (`Sealer.seal` / `open`). Brokers of two
versions in one fleet must agree byte for byte (tests/test_shared.py pins it).

Keys: the prefix and an HMAC-SHA256 of (client id, tenant, kind or scope, profile, credential
id), lower-cased ids, under a key derived from the fleet's key: Redis never holds a tenant id,
a client id or a credential, and a broker with another key_file names other keys. The profile
and the credential id (`Sealer.credential_id`: an HMAC of what identifies the credential, never
the credential) keep every profile's tokens and refresh tokens its own. Values: FORMAT, a
12-byte nonce and AES-256-GCM with the fleet's key and the Redis key as associated data (a
value copied to another key does not decrypt). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag

from broker.config.settings import ProfileSettings

FORMAT = b"\x01"  # value layout version: FORMAT + 12-byte nonce + ciphertext (with its tag)
NONCE_BYTES = 12
TAG_BYTES = 16
NAME_LABEL = b"pc-token-broker redis key names"  # derives the key-naming key from the fleet's
CREDENTIAL_LABEL = b"pc-token-broker credential ids"  # derives the credential-id key likewise
SHARED_KINDS = ("aad", "partner", "refresh_token")  # what a shared key may name


def shared_key(
    profile: ProfileSettings,
    kind: str = "aad",
    *,
    credential: str,
    tenant: str | None = None,
    scope: str | None = None,
) -> tuple[str, ...]:
    """THE place a shared key is computed: what a token of `profile` is shared under,
    (client id, tenant, what, profile name, credential id), named in Redis by `Sealer.name`.
    `credential` is the profile's credential id (`SharedCache.credential_id`): brokers share a
    token only when they run the same profile with the same credential (secret, certificate,
    refresh-token lineage); no token or refresh token crosses to another profile.

    - "aad": an Azure AD token for `scope` (default: the profile's) in `tenant` (default: the
      profile's own; a customer tenant's token is keyed by that tenant). A user's token
      (refresh_token grant) is keyed apart from the app's.
    - "partner": the Partner Center token the profile's own Azure AD token is exchanged for,
      keyed with the generatetoken URL.
    - "refresh_token": the profile's rotated refresh token (of its lineage).
    """
    if kind not in SHARED_KINDS:
        raise ValueError(f"no shared key for {kind!r}")
    tenant = profile.tenant_id if tenant is None else tenant
    scope = profile.scope if scope is None else scope
    if kind == "refresh_token":
        what = f"refresh_token {scope}"
    else:
        what = f"user {scope}" if profile.credential == "refresh_token" else scope
        if kind == "partner":
            what = f"{what} > {profile.generatetoken_url}"
    return (profile.client_id, tenant, what, profile.name, credential)


class Sealer:
    """Key names and sealed values under one fleet key (32 bytes) and prefix."""

    def __init__(self, key: bytes, prefix: str) -> None:
        # Imported here: a broker without [shared] never loads the AEAD.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self._name_key = hmac.new(key, NAME_LABEL, "sha256").digest()
        self._credential_key = hmac.new(key, CREDENTIAL_LABEL, "sha256").digest()
        self.prefix = prefix

    def credential_id(self, kind: str, identity: str) -> str:
        """What names a credential in shared keys: an HMAC (under a key derived from the
        fleet's) of its kind and identity (a secret, a certificate's thumbprint, a refresh
        token's lineage): brokers of the fleet with the same credential agree, and the id
        says nothing about the credential."""
        material = json.dumps([kind, identity]).encode()
        return hmac.new(self._credential_key, material, hashlib.sha256).hexdigest()

    def name(self, client_id: str, tenant: str, *what: str) -> str:
        """The Redis key of one token: the prefix and an HMAC, never the ids themselves."""
        material = json.dumps([client_id.lower(), tenant.lower(), *what]).encode()
        digest = hmac.new(self._name_key, material, hashlib.sha256).hexdigest()
        return f"{self.prefix}:tok:{digest}"

    def seal(self, name: str, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT + nonce + self._aead.encrypt(nonce, plain, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes | None:
        """The plain bytes; None for a value sealed under another key or name, or tampered."""
        if not sealed.startswith(FORMAT) or len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:
            return None
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], name.encode())
        except InvalidTag:
            return None
