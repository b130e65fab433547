"""Reading a token's expiry from an upstream answer: JWT exp, expires_in, expires_on."""

from __future__ import annotations

import jwt
import pytest

from broker.core.tokens import MAX_LIFETIME, TokenRejected, token_from_response

NOW = 1_800_000_000.0
MONO = 500.0


def make_jwt(**claims) -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


def left(body: dict) -> float:
    token = token_from_response(body, now_mono=MONO, now_wall=NOW)
    return token.expires_mono - MONO


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("jwt exp only", {"access_token": make_jwt(exp=NOW + 3600)}, 3600),
        (
            "expires_in as number, opaque token",
            {"access_token": "opaque-token-1", "expires_in": 899},
            899,
        ),
        ("expires_in as string", {"access_token": "opaque-token-1", "expires_in": "899"}, 899),
        (
            "expires_on as string",
            {"access_token": "opaque", "expires_on": str(int(NOW + 600))},
            600,
        ),
        (
            "exp earlier than expires_in wins",
            {"access_token": make_jwt(exp=NOW + 300), "expires_in": 3600},
            300,
        ),
        (
            "expires_in earlier than exp wins",
            {"access_token": make_jwt(exp=NOW + 3600), "expires_in": "120"},
            120,
        ),
        (
            "iat in the future: counted from iat (skewed issuer clock)",
            {"access_token": make_jwt(iat=NOW + 600, exp=NOW + 600 + 3600)},
            3600,
        ),
        (
            "nbf in the future: counted from nbf",
            {"access_token": make_jwt(nbf=NOW + 100, exp=NOW + 1000)},
            900,
        ),
        (
            "iat in the past: counted from now",
            {"access_token": make_jwt(iat=NOW - 300, exp=NOW + 3300)},
            3300,
        ),
        (
            "JWT without exp falls back to expires_in",
            {"access_token": make_jwt(sub="x"), "expires_in": 60},
            60,
        ),
        (
            "just under the 24 h cap",
            {"access_token": "opaque-1", "expires_in": MAX_LIFETIME},
            MAX_LIFETIME,
        ),
    ],
)
def test_expiry_is_the_earliest_offered(name: str, body: dict, expected: float) -> None:
    """Each expiry source is read, and the earliest one wins."""
    assert left(body) == pytest.approx(expected), name


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("not an object", ["a"], "not an object"),
        ("no access_token", {"expires_in": 60}, "no access_token"),
        ("empty access_token", {"access_token": "", "expires_in": 60}, "no access_token"),
        ("no expiry at all", {"access_token": "opaque-token"}, "no usable expiry"),
        ("already expired JWT", {"access_token": make_jwt(exp=NOW - 1)}, "already expired"),
        ("zero expires_in", {"access_token": "opaque", "expires_in": 0}, "already expired"),
        (
            "over 24 h",
            {"access_token": "opaque", "expires_in": MAX_LIFETIME + 1},
            "absurd lifetime",
        ),
        ("header injection", {"access_token": "abc\r\nX-Evil: 1", "expires_in": 60}, "printable"),
        (
            "unreadable expires_in",
            {"access_token": "opaque", "expires_in": "soon"},
            "no usable expiry",
        ),
        ("boolean expires_in", {"access_token": "opaque", "expires_in": True}, "no usable expiry"),
    ],
)
def test_unusable_answers_are_rejected(name: str, body: object, reason: str) -> None:
    """Answers without a usable token or expiry are errors, never cache entries."""
    with pytest.raises(TokenRejected, match=reason):
        token_from_response(body, now_mono=MONO, now_wall=NOW)


def test_token_repr_never_shows_the_value() -> None:
    """A Token printed by accident (a log, a traceback) does not carry the token."""
    token = token_from_response(
        {"access_token": "very-secret-value", "expires_in": 60}, now_mono=MONO, now_wall=NOW
    )
    assert "very-secret-value" not in repr(token)
    assert "very-secret-value" not in str(token)


def test_servable_boundary_is_inclusive() -> None:
    """A token with exactly min_remaining left is servable; a hair less is not."""
    token = token_from_response(
        {"access_token": "opaque", "expires_in": 100}, now_mono=MONO, now_wall=NOW
    )
    assert token.servable(MONO + 70, 30)
    assert not token.servable(MONO + 70.001, 30)
    assert token.expires_on == int(NOW + 100)
