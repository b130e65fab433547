"""The redactor's three nets to the letter: which keys, which shapes (and the prefix kept in
front of what was cut), which known values and for how long, and how deep it looks."""

from __future__ import annotations

import pytest

from broker.observe.redact import LOG_LIMIT, REDACTED, SENSITIVE_KEYS, Redactor
from tests.support import JWT


def opaque(i: int) -> str:
    return f"opaque-token-{i:05d}"


def test_the_most_recent_512_tokens_are_known_and_the_oldest_go_first() -> None:
    r = Redactor()
    for i in range(513):
        r.add(opaque(i))
    assert r.text(opaque(0)) == opaque(0)  # evicted: the oldest
    assert r.text(opaque(1)) == REDACTED and r.text(opaque(512)) == REDACTED
    r.add(opaque(1))  # already known: adding it again does not make it younger
    r.add(opaque(513))
    assert r.text(opaque(1)) == opaque(1)
    assert r.text(opaque(2)) == REDACTED


def test_jwt_shaped_values_take_no_room_among_the_known_tokens() -> None:
    """The shape catches every JWT, so remembering them would only evict opaque tokens."""
    r = Redactor()
    r.add("opaque-kept-value")
    for i in range(600):
        r.add(f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOi{i:06d}.sig{i}")
    assert r.text("x opaque-kept-value y") == f"x {REDACTED} y"


def test_known_values_shorter_than_eight_characters_are_not_kept() -> None:
    r = Redactor(["1234567", "12345678"])
    r.add(None)
    r.add("")
    assert r.text("1234567 and 12345678") == f"1234567 and {REDACTED}"


def test_every_occurrence_of_a_known_value_is_replaced() -> None:
    r = Redactor(["secret-one-value", "secret-two-value"])
    assert r.text("secret-one-valuesecret-two-value, again secret-one-value") == (
        f"{REDACTED}{REDACTED}, again {REDACTED}"
    )
    assert r.text("") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BEARER abc-123", f"BEARER {REDACTED}"),
        ("bearer\tabc", f"bearer\t{REDACTED}"),
        ('"Bearer abc"', f'"Bearer {REDACTED}"'),
        ("password: 'hunter2'", f"password: '{REDACTED}'"),
        ('{"client_assertion":"abc.def"}', '{"client_assertion":"' + REDACTED + '"}'),
        ("Access_Token = zz&x=1", f"Access_Token = {REDACTED}&x=1"),
        ("assertion=abc;next", f"assertion={REDACTED};next"),
        (f"jwt:{JWT}.", f"jwt:{REDACTED}."),
        ("eyJshort.a.b", "eyJshort.a.b"),  # too short to be a JWT
        ("the bearer of bad news", f"the bearer {REDACTED} bad news"),
        ("nothing here", "nothing here"),
    ],
)
def test_shapes_are_cut_keeping_the_prefix_that_says_what_was_there(
    text: str, expected: str
) -> None:
    assert Redactor().text(text) == expected


@pytest.mark.parametrize("key", sorted(SENSITIVE_KEYS))
def test_values_under_sensitive_keys_are_replaced_whatever_they_are(key: str) -> None:
    r = Redactor()
    assert r.value({key: {"nested": 1}, key.upper(): 42, "fine": "ok"}) == {
        key: REDACTED,
        key.upper(): REDACTED,
        "fine": "ok",
    }


def test_structures_keep_their_types_and_their_harmless_values() -> None:
    r = Redactor(["known-secret-value"])
    event = {
        "tuple": ("a", JWT),
        "set": frozenset({"known-secret-value"}),
        "list": [1, None, 2.5, True],
        7: "known-secret-value",
        "error": ValueError("bad known-secret-value"),
    }
    assert r.value(event) == {
        "tuple": ("a", REDACTED),
        "set": frozenset({REDACTED}),
        "list": [1, None, 2.5, True],
        7: REDACTED,
        "error": f"ValueError: bad {REDACTED}",
    }


def test_six_levels_of_nesting_are_searched_and_anything_deeper_is_hidden() -> None:
    def nest(value, levels):
        for _ in range(levels):
            value = [value]
        return value

    r = Redactor()
    assert r.value({"a": nest(JWT, 6)}) == {"a": nest(REDACTED, 6)}
    assert r.value({"a": nest(JWT, 8)}) == {"a": nest(REDACTED, 6)}
    assert r.value(nest({"token": "x", "ok": "y"}, 7)) == nest(REDACTED, 7)


def test_a_self_referencing_structure_does_not_recurse_forever() -> None:
    loop: list = ["x"]
    loop.append(loop)
    out = Redactor().value({"loop": loop})
    depth = 0
    while isinstance(out, dict | list) and depth < 50:
        out = out["loop"] if isinstance(out, dict) else out[1]
        depth += 1
    assert out == REDACTED and depth <= 8


def test_as_a_structlog_processor_it_returns_the_scrubbed_event() -> None:
    r = Redactor(["known-secret-value"])
    event = {"event": "x known-secret-value", "authorization": "Basic abc"}
    assert r(None, "info", event) == {"event": f"x {REDACTED}", "authorization": REDACTED}


def flood(r: Redactor, n: int = 600) -> None:
    for i in range(n):
        r.add(opaque(i))


def test_config_secrets_are_pinned_and_never_evicted_by_tokens() -> None:
    r = Redactor(["initial-secret-value"])
    r.pin("config", ["config-secret-value", "short", None])
    r.pin("file:/run/secret", ["file-secret-value"])
    r.add("config-secret-value")  # a token equal to a secret stays pinned
    flood(r)
    assert r.text("initial-secret-value config-secret-value file-secret-value") == " ".join(
        [REDACTED] * 3
    )
    assert r.text(opaque(0)) == opaque(0)  # tokens still come and go
    assert r.text("short") == "short"


def test_a_token_later_pinned_as_a_secret_is_never_evicted() -> None:
    r = Redactor()
    r.add("was-a-token-value")
    r.pin("config", ["was-a-token-value"])
    flood(r)
    assert r.text("was-a-token-value") == REDACTED


def test_a_secret_its_owner_dropped_stays_known_as_an_evictable_value() -> None:
    """After a reload that removed a secret, it is still redacted, until 512 newer values
    push it out; the secrets still held stay pinned."""
    r = Redactor()
    r.pin("config", ["old-secret-value", "kept-secret-value"])
    r.pin("config", ["kept-secret-value"])
    assert r.text("old-secret-value") == REDACTED
    flood(r, 511)
    assert r.text("old-secret-value") == REDACTED
    r.add(opaque(99_999))
    assert r.text("old-secret-value") == "old-secret-value"
    assert r.text("kept-secret-value") == REDACTED


def test_an_owner_holding_nothing_any_more_pins_nothing() -> None:
    r = Redactor()
    r.pin("file:/a", ["file-a-secret-value"])
    r.pin("file:/b", ["file-b-secret-value"])
    r.pin("file:/a", [])
    flood(r)
    assert r.text("file-a-secret-value file-b-secret-value") == (f"file-a-secret-value {REDACTED}")


def test_a_token_of_exactly_eight_characters_is_remembered_and_seven_is_not() -> None:
    r = Redactor()
    r.add("tok-1234")
    r.add("tok-123")
    assert r.text("tok-1234 and tok-123") == f"{REDACTED} and tok-123"


# JWTs inside one run of dotted token characters (a URL path, a dotted log field): every whole
# JWT is cut, whatever stands before or after it in the run, and nothing else is.
J2 = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJwYyJ9.c2ln"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the shortest JWT the shape knows: eyJ + 4, a dot, 4, a dot, a signature (even empty)
        ("eyJabcd.efgh.ijkl", REDACTED),
        ("eyJabcd.efgh.", REDACTED),
        ("x eyJabcd.efgh.ijkl y", f"x {REDACTED} y"),
        # one character short in the header or the payload: not a JWT
        ("eyJabc.efgh.ijkl", "eyJabc.efgh.ijkl"),
        ("eyJabcd.efg.ijkl", "eyJabcd.efg.ijkl"),
        # two parts are not a JWT, at the start or at the end of a run
        ("eyJabcdefg.hijk", "eyJabcdefg.hijk"),
        ("a.eyJabcdefg.hijk", "a.eyJabcdefg.hijk"),
        ("a.b.eyJabcdefg", "a.b.eyJabcdefg"),
        ("a.b.eyJ", "a.b.eyJ"),
        # an 'eyJ' too near a segment's end starts no JWT, however long the segment
        ("abcdefeyJab.cdef.ghij", "abcdefeyJab.cdef.ghij"),
        # dotted text before and after a JWT in the same run is kept as it is
        (f"api.v1.{JWT}.tail", f"api.v1.{REDACTED}.tail"),
        (f"x.{JWT}.y.z", f"x.{REDACTED}.y.z"),
        (f"abcd.efgh.ijkl.{JWT}", f"abcd.efgh.ijkl.{REDACTED}"),
        # two JWTs joined by a dot, and a JWT glued to text before it: each cut whole
        (f"{JWT}.{J2}", f"{REDACTED}.{REDACTED}"),
        (f"{JWT}.{J2}.after", f"{REDACTED}.{REDACTED}.after"),
        (f"id={JWT}", f"id={REDACTED}"),
        (f"prefix{JWT}", f"prefix{REDACTED}"),
    ],
)
def test_jwts_in_a_dotted_run_are_cut_whole_and_nothing_else(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


def test_a_jwt_header_that_itself_contains_eyj_is_cut_from_its_first_eyj() -> None:
    """The leftmost 'eyJ' of a segment starts the JWT: a later one inside the header (base64 of
    a header can hold one) leaves nothing of the header behind."""
    header = "eyJhbGciOiJeyJIUzI"  # a second 'eyJ' with 7 characters after it
    short = "eyJhbGciOiJIeyJab"  # a second 'eyJ' with only 5 after it
    assert Redactor().text(f"{header}.eyJzdWIi.c2ln") == REDACTED
    assert Redactor().text(f"k:{short}.eyJzdWIi.c2ln end") == f"k:{REDACTED} end"


# -- cutting long text: only at whitespace, never through a secret -------------------------------


def test_text_at_the_limit_is_kept_and_longer_text_is_cut_at_its_last_whitespace() -> None:
    r = Redactor()
    assert r.truncate("a" * 10, 10) == "a" * 10
    assert r.truncate("aaaaa bbbbb", 10) == "aaaaa [truncated]"
    assert r.truncate("aa bb cc dd", 9) == "aa bb cc [truncated]"  # the last space, not the first
    assert r.truncate("aa\tbbXbbbbbb", 8) == "aa [truncated]"  # tab counts; an X does not
    assert r.truncate("aa bb\ncc dd", 8) == "aa bb [truncated]"
    assert r.truncate("a bbbbbbbbbbbb", 10) == "a [truncated]"  # whitespace at 1 still cuts


def test_text_without_whitespace_to_cut_at_is_dropped_whole() -> None:
    """A 20-character word (it may be a token) over a 10-character limit: nothing of it
    is kept, not a prefix, not a placeholder."""
    assert Redactor().truncate("x" * 20, 10) == " [truncated]"
    assert Redactor().truncate(" " + "x" * 20, 10) == " [truncated]"


def test_a_secret_with_spaces_that_the_cut_would_split_is_dropped_whole() -> None:
    r = Redactor(["open sesame please"])
    text = "log: open sesame please and more"
    assert r.truncate(text, 22) == "log: [truncated]"  # not "log: open sesame"
    assert r.truncate(text, 13) == "log: [truncated]"  # not "log: open"
    assert r.text(text, 22) == "log: [truncated]"
    assert Redactor().truncate(text, 22) == "log: open sesame [truncated]"  # unknown: kept


def test_a_logged_string_is_cut_to_the_log_limit_before_redaction() -> None:
    """A huge logged value (a hostile upstream's body) is cut at whitespace near LOG_LIMIT
    characters: the log line stays bounded, and the part kept is still redacted."""
    r = Redactor(["known-secret-value"])
    huge = "word " * (LOG_LIMIT // 2)  # 2.5 x LOG_LIMIT characters
    out = r.value(huge)
    assert out.endswith(" [truncated]")
    assert LOG_LIMIT - 10 <= len(out) <= LOG_LIMIT + len(" [truncated]")
    assert r.value({"nested": [huge]})["nested"][0] == out
    leaked = r.value("known-secret-value " + huge)
    assert "known-secret-value" not in leaked and leaked.startswith(REDACTED)


def test_a_token_pinned_then_released_is_remembered_as_the_newest() -> None:
    """A value known as a token, then pinned as a secret, then released by its owner: it is
    remembered again as the newest known value, so 511 later tokens do not push it out."""
    r = Redactor()
    secret = "was-a-token-then-a-secret"
    r.add(secret)
    r.pin("config", [secret])
    for i in range(511):
        r.add(opaque(i))
    r.pin("config", [])  # released: still redacted, as an evictable value
    r.add(opaque(1000))
    assert r.text(f"x {secret} y") == f"x {REDACTED} y"
    assert r.text(opaque(0)) == opaque(0)  # the oldest token went instead
