"""Reading a token's expiry from an upstream answer: JWT exp, expires_in, expires_on; and to the
letter, the default token type, each expiry source on its own, the boundaries of the lifetime
checks and the values a Token reports.
"""

from __future__ import annotations

import jwt
import pytest

from broker.core.tokens.token import (
    MAX_LIFETIME,
    Token,
    TokenRejected,
    jwt_seconds_left,
    seconds_left,
    token_from_response,
)

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


# -- to the letter: token type, each expiry source alone, lifetime bounds, a Token -------------


def read(body: object, max_lifetime: float = MAX_LIFETIME) -> Token:
    return token_from_response(body, now_mono=MONO, now_wall=NOW, max_lifetime=max_lifetime)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ({}, "Bearer"),
        ({"token_type": None}, "Bearer"),
        ({"token_type": ""}, "Bearer"),
        ({"token_type": 7}, "Bearer"),
        ({"token_type": "bearer"}, "bearer"),
        ({"token_type": "pop"}, "pop"),
    ],
)
def test_token_type_defaults_to_bearer_when_upstream_omits_it(sent: dict, kept: str) -> None:
    token = read({"access_token": "opaque-token", "expires_in": 60, **sent})
    assert token.token_type == kept


def test_a_token_is_anchored_at_receipt_on_both_clocks() -> None:
    token = read({"access_token": "opaque-token", "expires_in": 600})
    assert token.value == "opaque-token"
    assert token.received_mono == MONO and token.expires_mono == MONO + 600
    assert token.received_wall == NOW and token.lifetime == 600
    assert token.remaining(MONO + 100) == 500
    assert token.expires_on == int(NOW + 600)


def test_expires_on_rounds_down_to_whole_seconds() -> None:
    token = Token("v", "Bearer", 10.0, 70.9, 1000.5)
    assert token.expires_on == 1061 and isinstance(token.expires_on, int)


def test_the_lifetime_cap_is_inclusive_and_configurable() -> None:
    assert read({"access_token": "t" * 8, "expires_in": 100}, max_lifetime=100).lifetime == 100
    with pytest.raises(TokenRejected, match=r"absurd lifetime \(101 s > 100 s\)"):
        read({"access_token": "t" * 8, "expires_in": 101}, max_lifetime=100)


def test_a_token_with_a_hair_of_life_left_is_accepted_and_none_left_is_not() -> None:
    assert read({"access_token": "t" * 8, "expires_in": 0.5}).lifetime == 0.5
    with pytest.raises(TokenRejected, match=r"already expired \(-5 s\)"):
        read({"access_token": "t" * 8, "expires_in": -5})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x", True),
        ("!~", True),
        ("a" * 16384, True),
        ("a" * 16385, False),
        ("has space", False),
        ("tab\there", False),
        ("caf\u00e9", False),
        ("\x7f", False),
    ],
)
def test_access_token_must_be_printable_ascii_of_sane_length(value: str, ok: bool) -> None:
    body = {"access_token": value, "expires_in": 60}
    if ok:
        assert read(body).value == value
    else:
        with pytest.raises(TokenRejected, match="printable ASCII"):
            read(body)


@pytest.mark.parametrize("value", [None, 5, ["x"], {"a": 1}])
def test_access_token_must_be_a_string(value: object) -> None:
    with pytest.raises(TokenRejected, match="no access_token"):
        read({"access_token": value, "expires_in": 60})


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("expires_in", " 899 ", 899.0),
        ("expires_in", "899.5", 899.5),
        ("expires_in", 899.5, 899.5),
        ("expires_on", NOW + 600, 600.0),
        ("expires_on", f"{NOW + 600:.0f}", 600.0),
    ],
)
def test_numbers_are_read_as_numbers_or_strings(field: str, value: object, expected: float) -> None:
    assert seconds_left({"access_token": "opaque", field: value}, NOW) == expected


@pytest.mark.parametrize("value", [True, False, None, "", "soon", [60], {"s": 60}])
def test_unreadable_expiry_values_are_ignored_not_guessed(value: object) -> None:
    body = {"access_token": "opaque", "expires_in": value, "expires_on": value}
    with pytest.raises(TokenRejected, match="no usable expiry"):
        seconds_left(body, NOW)
    assert seconds_left({**body, "expires_in": 30}, NOW) == 30


def test_expires_on_earlier_than_expires_in_wins() -> None:
    body = {"access_token": "opaque", "expires_in": 3600, "expires_on": NOW + 120}
    assert seconds_left(body, NOW) == 120


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("opaque", None),
        ("a.b", None),
        ("a.b.c.d", None),
        ("not.a.jwt", None),
        (make_jwt(sub="x"), None),
        (make_jwt(exp="soon"), None),
        (make_jwt(exp=NOW + 60), 60.0),
        (make_jwt(exp=str(int(NOW + 60))), 60.0),
        (make_jwt(exp=NOW + 60, iat="garbage"), 60.0),
        (make_jwt(exp=NOW + 600, iat=NOW + 100, nbf=NOW + 300), 300.0),
        (make_jwt(exp=NOW + 600, iat=NOW + 300, nbf=NOW + 100), 300.0),
    ],
)
def test_jwt_seconds_left(token: str, expected: float | None) -> None:
    assert jwt_seconds_left(token, NOW) == expected


def test_an_expired_jwt_is_still_read_not_refused_by_pyjwt() -> None:
    """PyJWT would refuse an expired token when verifying; the broker must read its exp to
    reject it with its own reason."""
    assert jwt_seconds_left(make_jwt(exp=NOW - 10), NOW) == -10


# Every refusal's reason is part of what the broker reports upstream failures with (logs, status
# `last_error`): each is pinned word for word, not only by a fragment.
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (["access_token"], "answer is not an object"),
        ({"expires_in": 60}, "answer has no access_token"),
        (
            {"access_token": "two words", "expires_in": 60},
            "access_token is not printable ASCII of sane length",
        ),
        ({"access_token": "opaque"}, "no usable expiry (no JWT exp, expires_in or expires_on)"),
        ({"access_token": "opaque", "expires_in": "nan"}, "an expiry number is not finite"),
        ({"access_token": "opaque", "expires_in": float("inf")}, "an expiry number is not finite"),
        ({"access_token": "opaque", "expires_in": 10**400}, "an expiry number is out of range"),
        ({"access_token": "opaque", "expires_on": 10**400}, "an expiry number is out of range"),
    ],
)
def test_each_refusal_gives_its_reason_word_for_word(body: object, reason: str) -> None:
    with pytest.raises(TokenRejected) as refused:
        read(body)
    assert str(refused.value) == reason
