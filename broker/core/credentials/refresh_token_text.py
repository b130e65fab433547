"""What a refresh token's text and an Azure AD token's claims say, read without I/O: whether a
string is a refresh token the broker may redeem and write back, and whether a sign-in had MFA.
Shared by the refresh_token grant and `pc-token-broker consent`."""

from __future__ import annotations

from typing import Any

import jwt

# A refresh token the broker will redeem and write back: printable ASCII, 1 to this many
# characters (Azure AD's are about 1-2 KiB). Anything else is refused like a bad token answer.
REFRESH_TOKEN_LIMIT = 16 * 1024
_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))


def usable_refresh_token(value: object) -> bool:
    """A string of 1 to REFRESH_TOKEN_LIMIT printable ASCII characters (no space, no control
    character, no lone surrogate): what a form can carry and a file can hold."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= REFRESH_TOKEN_LIMIT
        and _PRINTABLE.issuperset(value)
    )


def shows_mfa(token: Any) -> bool | None:
    """Whether an Azure AD access token's `amr` claim includes "mfa"; None if it has no `amr`
    (not a JWT, or an app-only token). Read, never verified: the broker is not the audience."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        amr = jwt.decode(token, options={"verify_signature": False}).get("amr")
    except jwt.PyJWTError:
        return None
    if not isinstance(amr, list):
        return None
    return "mfa" in amr
