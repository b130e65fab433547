"""The `Token` value and reading its expiry from an upstream answer. Pure: no I/O, no clock calls.

Expiry rule: the JWT's `exp` (read with PyJWT, signature not verified: the broker is not the
audience), `expires_in` and `expires_on` are each turned into "seconds left at receipt"; the
smallest wins. The result is anchored on the monotonic clock at receipt, so a wall-clock jump
on this host never stretches or shrinks a token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

# 24 h: Azure AD issues 60-90 minute tokens (up to 28 h with CAE, accepted only for the entries
# that ask for it: broker.core.resources); Partner Center's are shorter. Anything longer is a
# broken or hostile upstream.
MAX_LIFETIME = 24 * 3600.0

# Printable ASCII, no spaces: a token goes into Authorization headers, so CR/LF or controls
# in one could inject headers downstream. 16 KiB is far above any real Azure AD token (~2-3 KiB).
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,16384}")


class Kind(StrEnum):
    """A profile's two tokens: its Azure AD token, and the Partner Center token exchanged for
    it. (A StrEnum: equal to its value, and written as it in JSON, logs and metric labels.)"""

    PARTNER = "partner"
    AAD = "aad"


class TokenRejected(ValueError):
    """The answer is not a usable token. The message never includes the token."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    token_type: str
    received_mono: float
    expires_mono: float
    received_wall: float
    # Where it came from: "upstream" (Azure AD, Partner Center, a file) or "shared" (another
    # broker of the fleet fetched it; read from Redis), for the operators' views.
    source: str = "upstream"

    @property
    def lifetime(self) -> float:
        """Seconds between receipt and expiry."""
        return self.expires_mono - self.received_mono

    @property
    def expires_on(self) -> int:
        """Expiry as whole epoch seconds, by this host's wall clock at receipt (rounded down)."""
        return int(self.received_wall + self.lifetime)

    def remaining(self, now_mono: float) -> float:
        return self.expires_mono - now_mono

    def servable(self, now_mono: float, min_remaining: float) -> bool:
        """Whether it may be handed out: at least `min_remaining` seconds must be left."""
        return self.expires_mono - now_mono >= min_remaining

    def __repr__(self) -> str:  # never the value
        return f"Token(type={self.token_type!r}, lifetime={self.lifetime:.0f}s)"


def _number(value: Any) -> float | None:
    """A number sent as a number or as a string of digits (real services do both); None when
    absent or not a number. NaN, infinities and numbers beyond a float are TokenRejected:
    they pass every range check (NaN compares false) and break every use after."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except OverflowError:
        raise TokenRejected("an expiry number is out of range") from None
    except ValueError:
        return None
    if not math.isfinite(number):
        raise TokenRejected("an expiry number is not finite")
    return number


def jwt_seconds_left(token: str, now_wall: float) -> float | None:
    """Seconds left by the JWT's own claims, or None when it is not a JWT with an `exp`.

    If `iat` or `nbf` lies in our future, the issuer's clock runs ahead of ours; counting from
    now would overstate the life the audience (on the issuer's clock) will grant. So the honest
    remaining lifetime is measured from the latest of now, `iat` and `nbf`.
    """
    if token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = _number(claims.get("exp"))
    if exp is None:
        return None
    start = now_wall
    for claim in ("iat", "nbf"):
        at = _number(claims.get(claim))
        if at is not None and at > start:
            start = at
    return exp - start


def seconds_left(body: Mapping[str, Any], now_wall: float) -> float:
    """Seconds of life left at receipt, the smallest of every expiry the answer offers."""
    candidates: list[float] = []
    from_jwt = jwt_seconds_left(body["access_token"], now_wall)
    if from_jwt is not None:
        candidates.append(from_jwt)
    expires_in = _number(body.get("expires_in"))
    if expires_in is not None:
        candidates.append(expires_in)
    expires_on = _number(body.get("expires_on"))
    if expires_on is not None:
        candidates.append(expires_on - now_wall)
    if not candidates:
        raise TokenRejected("no usable expiry (no JWT exp, expires_in or expires_on)")
    return min(candidates)


def token_from_response(
    body: Any, *, now_mono: float, now_wall: float, max_lifetime: float = MAX_LIFETIME
) -> Token:
    """Validate an upstream token answer and anchor its expiry at receipt."""
    if not isinstance(body, Mapping):
        raise TokenRejected("answer is not an object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenRejected("answer has no access_token")
    if not _TOKEN_SHAPE.fullmatch(value):
        raise TokenRejected("access_token is not printable ASCII of sane length")
    left = seconds_left(body, now_wall)
    if left <= 0:
        raise TokenRejected(f"token already expired ({left:.0f} s)")
    if left > max_lifetime:
        raise TokenRejected(f"absurd lifetime ({left:.0f} s > {max_lifetime:.0f} s)")
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        token_type = "Bearer"
    return Token(
        value=value,
        token_type=token_type,
        received_mono=now_mono,
        expires_mono=now_mono + left,
        received_wall=now_wall,
    )
