"""The fleet's published format: what a token is shared under (`shared_key`), the Redis key
named from it (`Sealer.name`) and the sealed value (`Sealer.seal` / `open`). Brokers of two
versions in one fleet must agree byte for byte (tests/test_shared.py pins it).

Keys: the prefix and an HMAC-SHA256 of (client id, tenant, kind or scope), lower-cased ids,
under a key derived from the fleet's key: Redis never holds a tenant id or a client id, and a
broker with another key_file names other keys. Values: FORMAT, a 12-byte nonce and AES-256-GCM
with the fleet's key and the Redis key as associated data (a value copied to another key does
not decrypt). Pure: no I/O.
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
SHARED_KINDS = ("aad", "partner", "refresh_token")  # what a shared key may name


def shared_key(
    profile: ProfileSettings,
    kind: str = "aad",
    *,
    tenant: str | None = None,
    scope: str | None = None,
) -> tuple[str, str, str]:
    """THE place a shared key is computed: what a token of `profile` is shared under,
    (client id, tenant, what), named in Redis by `Sealer.name`.

    - "aad": an Azure AD token for `scope` (default: the profile's) in `tenant` (default: the
      profile's own; a customer tenant's token is keyed by that tenant). A user's token
      (refresh_token grant) is keyed apart from the app's.
    - "partner": the Partner Center token the profile's own Azure AD token is exchanged for,
      keyed with the generatetoken URL.
    - "refresh_token": the profile's rotated refresh token.
    """
    if kind not in SHARED_KINDS:
        raise ValueError(f"no shared key for {kind!r}")
    tenant = profile.tenant_id if tenant is None else tenant
    scope = profile.scope if scope is None else scope
    if kind == "refresh_token":
        return (profile.client_id, tenant, f"refresh_token {scope}")
    what = f"user {scope}" if profile.credential == "refresh_token" else scope
    if kind == "partner":
        what = f"{what} > {profile.generatetoken_url}"
    return (profile.client_id, tenant, what)


class Sealer:
    """Key names and sealed values under one fleet key (32 bytes) and prefix."""

    def __init__(self, key: bytes, prefix: str) -> None:
        # Imported here: a broker without [shared] never loads the AEAD.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self._name_key = hmac.new(key, NAME_LABEL, "sha256").digest()
        self.prefix = prefix

    def name(self, client_id: str, tenant: str, what: str) -> str:
        """The Redis key of one token: the prefix and an HMAC, never the ids themselves."""
        material = json.dumps([client_id.lower(), tenant.lower(), what]).encode()
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
