"""Redaction of anything token-like or secret-like: in log events, exception texts, error bodies.

Three nets, each catching what the others may miss:
1. keys whose name says "secret" (`client_secret`, `authorization`, `access_token`, ...): value
   replaced whatever it is;
2. shapes: JWTs (`eyJ...` three dot-separated parts), `Bearer <x>`, `secret=<x>` in form text;
3. known values: every secret the config loaded and the recent opaque tokens upstream issued,
   replaced wherever they appear, even inside longer text. Secrets are *pinned*: they stay
   known for as long as their config (or their credential file) is current, whatever number of
   tokens passes through. Only tokens are evictable (the most recent `_MAX_KNOWN` are kept).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
SENSITIVE_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "client_assertion",
        "assertion",
        "password",
        "authorization",
        "secret",
        "token",
        "bearer",
        "x-broker-key",
        "access_key",
        "x-identity-header",
        "identity_header",
        "cookie",
    }
)
# Every pattern here runs in linear time, whatever the input: possessive quantifiers never give
# back, and JWTs are looked for in whole runs of token characters, each taken once (a pattern
# that could start at any "eyJ" inside a run would rescan it from each: quadratic on
# "eyJeyJeyJ...", which froze the daemon for seconds).
_SHAPES = re.compile(
    r"(?i:bearer)\s++[^\s\"',;<>]++"  # Authorization: Bearer xyz
    r"|(?i:(?:client_secret|client_assertion|refresh_token|access_token|password|assertion)"
    r"[\"']?+\s*+[=:]\s*+[\"']?+)[^\s\"'&,;<>]++"  # form or JSON fragments
)
_SHAPE_HINTS = ("bearer", "secret", "assertion", "token", "password")
_B64 = "A-Za-z0-9_-"
_JWT = re.compile(rf"eyJ[{_B64}]{{4,}}+\.[{_B64}]{{4,}}+\.[{_B64}]*+")  # header always "{"...
_RUN = re.compile(rf"[.{_B64}]++")  # each run matched once, whole: no rescanning
_WHITESPACE = re.compile(r"\s")
LOG_LIMIT = 32 * 1024  # characters of one logged string; longer ones are cut before redaction
_MIN_KNOWN = 8  # shorter "secrets" would redact ordinary words
_MAX_KNOWN = 512  # recent opaque tokens remembered; JWTs are caught by shape anyway
_MAX_DEPTH = 6  # levels of nesting searched; a log event is two or three deep


class Redactor:
    """Scrubs secrets from text and structures. One per process, fed by config and the cache."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known: OrderedDict[str, None] = OrderedDict()  # tokens: evictable, oldest first
        self._pinned: dict[str, dict[str, None]] = {}  # secrets by owner: never evicted
        self._all_pinned: frozenset[str] = frozenset()
        self.pin("initial", known)

    def pin(self, owner: str, values: Iterable[str | None]) -> None:
        """Make `values` the secrets `owner` holds ("config", a credential file ...): redacted
        for as long as `owner` holds them, whatever number of tokens passes meanwhile. Values
        `owner` held before and holds no longer are still redacted, as evictable ones."""
        kept = {v: None for v in values if v and len(v) >= _MIN_KNOWN}
        for old in self._pinned.get(owner, {}):
            if old not in kept:
                self._remember(old)
        if kept:
            self._pinned[owner] = kept
        else:
            self._pinned.pop(owner, None)
        self._all_pinned = frozenset().union(*self._pinned.values())
        for value in kept:
            self._known.pop(value, None)

    def add(self, value: str | None) -> None:
        """Remember a token so it is redacted wherever it turns up (evictable: the most recent
        `_MAX_KNOWN` are kept).

        JWT-shaped values are not kept: the shape pattern already catches every one of them,
        and the mirror alone may see thousands.
        """
        if not value or len(value) < _MIN_KNOWN or value in self._all_pinned:
            return
        if _JWT.fullmatch(value):
            return
        self._remember(value)

    def _remember(self, value: str) -> None:
        if value in self._known:
            return
        self._known[value] = None
        while len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)

    def text(self, value: str, limit: int | None = None) -> str:
        """`value` with every secret replaced; cut to at most about `limit` characters first
        (never inside a word, so no secret is cut in two), so a huge input costs little."""
        if not value:
            return value
        if limit is not None:
            value = self.truncate(value, limit)
        if "eyJ" in value:
            value = _RUN.sub(_redact_jwts, value)
        lowered = value.lower()
        if any(hint in lowered for hint in _SHAPE_HINTS):  # C substring search first
            value = _SHAPES.sub(_keep_prefix, value)
        for pinned in self._all_pinned:
            if pinned in value:
                value = value.replace(pinned, REDACTED)
        for known in self._known:  # substring search in C: cheap for the few hundred kept
            if known in value:
                value = value.replace(known, REDACTED)
        return value

    def truncate(self, value: str, limit: int) -> str:
        """At most `limit` characters (and a mark), cut at whitespace only: a token or secret
        cut in two would escape every net. A secret with spaces in it that the cut would
        split is dropped whole."""
        if len(value) <= limit:
            return value
        cut = value[:limit]
        end = max(cut.rfind(c) for c in " \t\r\n")
        cut = cut[:end] if end > 0 else ""
        for known in (*self._all_pinned, *self._known):
            if _WHITESPACE.search(known):
                for split in reversed([m.start() for m in _WHITESPACE.finditer(known)]):
                    if cut.endswith(known[:split]):
                        cut = cut[:-split]
                        break
        return cut.rstrip() + " [truncated]"

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value, LOG_LIMIT)
        if depth > _MAX_DEPTH:
            return REDACTED  # too deep to search: hidden rather than passed on unsearched
        if isinstance(value, dict):
            return {
                k: REDACTED
                if isinstance(k, str) and k.lower() in SENSITIVE_KEYS
                else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return type(value)(self.value(v, depth + 1) for v in value)
        if isinstance(value, BaseException):
            return self.text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """structlog processor: runs after exceptions are rendered, before the renderer."""
        return self.value(event_dict)


def _redact_jwts(match: re.Match[str]) -> str:
    """Within one run of dotted token characters, replace every JWT (`eyJ` + 4 or more
    characters, a dot, 4 or more, a dot, the signature): linear in the run's length."""
    run = match.group(0)
    if run.count(".") < 2 or "eyJ" not in run:
        return run
    parts = run.split(".")
    out = []
    k = 0
    while k < len(parts):
        segment = parts[k]
        start = segment.find("eyJ")  # the leftmost one leaves the most characters after it
        jwt = start >= 0 and len(segment) - start >= 7 and k + 2 < len(parts)
        if jwt and len(parts[k + 1]) >= 4:
            out.append(segment[:start] + REDACTED)
            k += 3
            continue
        out.append(segment)
        k += 1
    return ".".join(out)


def _keep_prefix(match: re.Match[str]) -> str:
    text = match.group(0)
    # Keep "Bearer " or "client_secret=" so the reader still knows what was there.
    m = re.match(r"(?i)(bearer\s+|[a-z_]+[\"']?\s*[=:]\s*[\"']?)", text)
    return (m.group(1) if m else "") + REDACTED
