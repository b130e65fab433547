"""What an upstream error answer says, for people: Azure AD's AADSTS code, its trace and
correlation ids (what Microsoft support asks for) and a bounded, redacted description.

Upstream text is hostile until shown otherwise: the body is parsed within limits (size, depth,
types), ids are kept only when GUID-shaped, and the description is one printable line, cut at a
word boundary (never mid-GUID) with an ellipsis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DESCRIPTION_MAX = 300  # characters of upstream description kept
_SCAN_MAX = 4096  # characters of a description looked at
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_IS_GUID = re.compile(_GUID)
_AADSTS = re.compile(r"\bAADSTS(\d{1,9})\b")
# Azure AD appends these to every description; they become fields of their own.
_TAIL = re.compile(
    rf"\s*(Trace ID: (?P<trace>{_GUID})|Correlation ID: (?P<corr>{_GUID})|"
    r"Timestamp: [0-9T:. Z-]+)"
)


@dataclass(frozen=True, slots=True)
class Details:
    description: str = ""
    aadsts: int | None = None  # e.g. 7000215 (shown as AADSTS7000215)
    trace_id: str | None = None
    correlation_id: str | None = None  # upstream's own, when it says one


def bounded(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """At most `limit` characters, cut at the last space before the limit (unless that would
    lose more than half), ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.") + "…"


def _guid(value: Any) -> str | None:
    return value if isinstance(value, str) and _IS_GUID.fullmatch(value) else None


def _one_line(text: str) -> str:
    if len(text) > _SCAN_MAX:
        # Cut at whitespace only, before redaction: a secret cut in two would escape it.
        cut = text[:_SCAN_MAX]
        text = cut[: max(0, *(cut.rfind(c) for c in " \t\r\n"))]
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())


def parse_details(body: bytes, headers: Mapping[str, str], redact: Callable[[str], str]) -> Details:
    """Details from an Azure AD (`error`, `error_description`, `error_codes`, `trace_id`,
    `correlation_id`) or Partner Center (`code`, `description`/`message`) error answer, with
    the ids of the response headers as fallback. Anything unreadable gives empty details."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if not isinstance(data, dict):
        data = {}
    text = ""
    for key in ("error_description", "description", "message"):
        if isinstance(data.get(key), str) and data[key].strip():
            text = _one_line(data[key])
            break
    trace = _guid(data.get("trace_id"))
    correlation = _guid(data.get("correlation_id"))
    for m in _TAIL.finditer(text):
        trace = trace or m.group("trace")
        correlation = correlation or m.group("corr")
    text = _TAIL.sub("", text).strip()
    aadsts = None
    codes = data.get("error_codes")
    if isinstance(codes, list) and codes:
        first = codes[0]
        if isinstance(first, int) and not isinstance(first, bool) and 0 < first < 10**9:
            aadsts = first
    found = _AADSTS.search(text)
    if aadsts is None and found:
        aadsts = int(found.group(1))
    prefix = [
        _one_line(str(data[k]))
        for k in ("error", "code")
        if isinstance(data.get(k), str | int)
        and not isinstance(data.get(k), bool)
        and str(data[k]).strip()
    ]
    description = _one_line(" ".join([*prefix, text]))
    lower = {k.lower(): v for k, v in headers.items()}
    trace = trace or _guid(lower.get("x-ms-request-id"))
    correlation = (
        correlation or _guid(lower.get("client-request-id")) or _guid(lower.get("ms-correlationid"))
    )
    return Details(bounded(redact(description)), aadsts, trace, correlation)
