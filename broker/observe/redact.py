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
_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT (header always "{"...)
    r"|(?i:bearer)\s+[^\s\"',;<>]+"  # Authorization: Bearer xyz
    r"|(?i:(?:client_secret|client_assertion|refresh_token|access_token|password|assertion)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;<>]+"  # form or JSON fragments
)
_MIN_KNOWN = 8  # shorter "secrets" would redact ordinary words
_MAX_KNOWN = 512  # recent opaque tokens remembered; JWTs are caught by shape anyway


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
        if _SHAPES.fullmatch(value):
            return
        self._remember(value)

    def _remember(self, value: str) -> None:
        if value in self._known:
            return
        self._known[value] = None
        while len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)

    def text(self, value: str) -> str:
        if not value:
            return value
        value = _SHAPES.sub(_keep_prefix, value)
        for pinned in self._all_pinned:
            if pinned in value:
                value = value.replace(pinned, REDACTED)
        for known in self._known:  # substring search in C: cheap for the few hundred kept
            if known in value:
                value = value.replace(known, REDACTED)
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth > 6:
            return value
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


def _keep_prefix(match: re.Match[str]) -> str:
    text = match.group(0)
    if text.startswith("eyJ"):
        return REDACTED
    # Keep "Bearer " or "client_secret=" so the reader still knows what was there.
    m = re.match(r"(?i)(bearer\s+|[a-z_]+[\"']?\s*[=:]\s*[\"']?)", text)
    return (m.group(1) if m else "") + REDACTED
