"""Media-type negotiation and token response bodies, built once per token.

The hot path (a cache hit) does one dict lookup for the Accept header, one identity check for
the prebuilt parts, and splices the seconds left into them: no JSON encoding per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from broker.core.tokens import Token

JSON = "application/json"
TEXT = "text/plain"
_OFFERED = (JSON, "application/xml", "text/xml", TEXT)
_ACCEPT_CACHE_MAX = 256  # distinct Accept headers remembered; callers send a handful


def _parse_accept(header: str) -> list[tuple[float, int, str]]:
    ranges = []
    for position, part in enumerate(header.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                # RFC 9110 allows 0 to 1: NaN (which outranked everything) counts as 0.
                q = 0.0 if not q >= 0.0 else min(q, 1.0)
        if media:
            ranges.append((q, position, media.lower()))
    return ranges


def negotiate(header: str | None, offered: tuple[str, ...] = _OFFERED) -> str | None:
    """The offered type the caller prefers (JSON when it does not care); None if none fits."""
    if not header or not header.strip():
        return offered[0]
    best: tuple[float, int, int] | None = None
    choice = None
    for q, position, media in _parse_accept(header):
        if q <= 0:
            continue
        for rank, candidate in enumerate(offered):
            major = candidate.split("/")[0]
            if media in (candidate, "*/*", f"{major}/*"):
                # Higher q wins; then a specific range over a wildcard; then the caller's order;
                # then our order (JSON first).
                specificity = 0 if media == candidate else 1
                key = (-q, specificity * 100 + position, rank)
                if best is None or key < best:
                    best, choice = key, candidate
    return choice


class Negotiator:
    """`negotiate` with a small memo: the same few Accept headers arrive over and over."""

    def __init__(self, offered: tuple[str, ...] = _OFFERED) -> None:
        self._offered = offered
        self._memo: dict[str | None, str | None] = {}

    def __call__(self, header: str | None) -> str | None:
        try:
            return self._memo[header]
        except KeyError:
            pass
        choice = negotiate(header, self._offered)
        if len(self._memo) >= _ACCEPT_CACHE_MAX:
            self._memo.clear()
        self._memo[header] = choice
        return choice


@dataclass(frozen=True, slots=True)
class Rendered:
    """A token's response bodies, split where the per-request `expires_in` goes."""

    token: Token
    json_head: bytes
    json_tail: bytes
    xml_head: bytes
    xml_tail: bytes
    text: bytes

    def body(self, media: str, expires_in: int) -> bytes:
        if media == JSON:
            return b"%b%d%b" % (self.json_head, expires_in, self.json_tail)
        if media == TEXT:
            return self.text
        return b"%b%d%b" % (self.xml_head, expires_in, self.xml_tail)


def render(token: Token, profile: str, kind: str) -> Rendered:
    head = json.dumps(
        {"access_token": token.value, "token_type": "Bearer", "expires_on": token.expires_on}
    )[:-1]
    tail = json.dumps({"profile": profile, "kind": kind})[1:]
    xml_fields = (
        f"<access_token>{escape(token.value)}</access_token><token_type>Bearer</token_type>"
        f"<expires_on>{token.expires_on}</expires_on><expires_in>"
    )
    return Rendered(
        token=token,
        json_head=f'{head}, "expires_in": '.encode(),
        json_tail=f", {tail}".encode(),
        xml_head=f'<?xml version="1.0" encoding="utf-8"?><token>{xml_fields}'.encode(),
        xml_tail=(
            f"</expires_in><profile>{escape(profile)}</profile><kind>{kind}</kind></token>"
        ).encode(),
        text=token.value.encode("ascii"),
    )


def render_tenant(
    token: Token, profile: str, tenant: str, scope: str, expires_in: int
) -> dict[str, Any]:
    """The fields of a customer-tenant token answer (kind aad), for `tenant_body`."""
    return {
        "access_token": token.value,
        "token_type": "Bearer",
        "expires_on": token.expires_on,
        "expires_in": expires_in,
        "profile": profile,
        "kind": "aad",
        "tenant": tenant,
        "scope": scope,
    }


def tenant_body(fields: dict[str, Any], media: str) -> bytes:
    """A customer-tenant token answer in `media` (built per request: these are not prebuilt,
    so a hundred thousand cached tokens do not carry a second copy each)."""
    if media == JSON:
        return json_body(fields)
    if media == TEXT:
        return str(fields["access_token"]).encode("ascii")
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    return f'<?xml version="1.0" encoding="utf-8"?><token>{inner}</token>'.encode()


def json_body(data: object) -> bytes:
    return json.dumps(data, separators=(", ", ": ")).encode()
