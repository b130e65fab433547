"""A caller's refusal of a cached token (`token_sha256_to_refresh`, the SHA-256 in lower-case
hex of a token a resource refused): which token a digest names, and what one entry remembers
of it so that each token is dropped at most once and never comes back.

Comparisons run in constant time: a digest is compared with the cached token's, never used to
look anything up.
"""

from __future__ import annotations

import hashlib
import hmac

from broker.core.tokens import Token
from broker.core.upstream import RefreshIds


def digest_of(token: Token) -> str:
    """The SHA-256 of `token`, in lower-case hex (as MSAL computes it)."""
    return hashlib.sha256(token.value.encode()).hexdigest()


def names(token: Token, digest: str) -> bool:
    """Whether `digest` is the SHA-256 (lower-case hex) of `token`."""
    return hmac.compare_digest(digest_of(token), digest)


def drops(last: str | None, token: Token, digest: str) -> bool:
    """Whether `digest` names `token` and is not `last` (the digest of the token an entry last
    dropped): a token is replaced at most once, whatever comes back."""
    return digest != last and names(token, digest)


def brought_back(last: str | None, token: Token, ids: RefreshIds) -> bool:
    """Whether a refresh that did not know of the refusal of `last` (`ids.refused` is another
    or none: it was in flight when the caller spoke) read the refused token back from the
    fleet's cache."""
    return (
        last is not None and ids.refused != last and token.source == "shared" and names(token, last)
    )
