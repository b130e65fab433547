"""Azure AD's refusals of a customer-tenant token, classified by their AADSTS code: each class
(`Refusal`) has the error code callers get, a cool-down, a reach and an HTTP status. Pure: no
I/O, no clock; `refusal_error` turns an answer into the error, `TenantRefused`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.core.errors import UpstreamError
from broker.core.tenants.codes import CODES
from broker.core.upstream import Answer, RefreshIds, Upstream

# Throttled without a Retry-After: wait this long; a Retry-After is honoured up to the cap.
THROTTLE_DEFAULT = 60.0
THROTTLE_CAP = 600.0
# Throttling reaches the tenant Azure AD throttled; the whole profile only when this many
# tenants were throttled within this many seconds (Azure AD throttling the app, not a tenant).
THROTTLE_SPREAD = 3
THROTTLE_WINDOW = 60.0


class Reach(StrEnum):
    """How far a refusal blocks: the one (tenant, scope) entry, the whole tenant, or every
    tenant of the profile. No single customer tenant's answer reaches the profile: throttling
    does when THROTTLE_SPREAD tenants are throttled within THROTTLE_WINDOW, a dead refresh
    token when the partner's own tenant confirms it (see memory.py)."""

    ENTRY = "entry"
    TENANT = "tenant"
    PROFILE = "profile"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A class of Azure AD refusal: the broker's error code (and tenant state), how long to
    remember it, how far it reaches, and the status callers get."""

    state: str
    cooldown: float
    reach: Reach
    status: int = 502
    retryable: bool = False


CONSENT_REQUIRED = Refusal("consent_required", 300.0, Reach.ENTRY)
INTERACTION_REQUIRED = Refusal("interaction_required", 600.0, Reach.TENANT)
REFRESH_TOKEN_INVALID = Refusal("refresh_token_invalid", 600.0, Reach.TENANT)
TENANT_NOT_FOUND = Refusal("tenant_not_found", 900.0, Reach.TENANT)
THROTTLED = Refusal("throttled", THROTTLE_DEFAULT, Reach.TENANT, status=503, retryable=True)

_CLASSES = {
    r.state: r
    for r in (CONSENT_REQUIRED, INTERACTION_REQUIRED, REFRESH_TOKEN_INVALID, TENANT_NOT_FOUND)
} | {THROTTLED.state: THROTTLED}
# Azure AD's codes by class: from the one table of codes (codes.py), which also says what each
# means and its fix. 900421 is Partner Center's, never in an Azure AD answer: harmless here.
AADSTS: dict[int, Refusal] = {c.code: _CLASSES[c.state] for c in CODES if c.state in _CLASSES}
# The tenant states a refusal class names (the listing's `state` besides ok, idle, failing).
STATES = frozenset(_CLASSES)
_AADSTS_TEXT = re.compile(r"AADSTS(\d{4,7})")


def aadsts_codes(body: bytes) -> list[int]:
    """The AADSTS codes of an Azure AD error answer: `error_codes`, else the description's."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    codes = data.get("error_codes")
    if isinstance(codes, list):
        found = [c for c in codes[:8] if isinstance(c, int) and not isinstance(c, bool)]
        if found:
            return found
    text = data.get("error_description")
    if isinstance(text, str):
        return [int(m) for m in _AADSTS_TEXT.findall(text[:2000])[:8]]
    return []


def classify(status: int, codes: list[int]) -> Refusal | None:
    if status == 429:
        return THROTTLED
    for code in codes:
        if code in AADSTS:
            return AADSTS[code]
    return None


class TenantRefused(UpstreamError):
    """An Azure AD refusal of a known class; `code` is the class, `aadsts` Azure AD's code."""

    refusal: Refusal

    def __init__(self, refusal: Refusal, message: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self._fields(
            refusal=refusal,
            code=refusal.state,
            status=refusal.status,
            retryable=refusal.retryable,
        )

    # The block (memory.Block) this refusal was told again from, if it was: an entry that
    # remembers it may go upstream again as soon as that block is lifted.
    block: object | None = None

    def again(self, retry_after: float, block: object | None = None) -> TenantRefused:
        """The remembered refusal, told again with the time still left."""
        told = TenantRefused(
            self.refusal,
            self.message,
            aadsts=self.aadsts,
            endpoint=self.endpoint,
            upstream_status=self.upstream_status,
            retry_after=max(1.0, retry_after),
            correlation_id=self.correlation_id,
            trace_id=self.trace_id,
        )
        told._fields(block=block)
        return told


def refusal_error(upstream: Upstream, answer: Answer, ids: RefreshIds) -> UpstreamError:
    """Azure AD's non-200 answer as the error callers see: classified when its AADSTS code (or
    a 429) says which kind of refusal it is."""
    error = upstream.error("aad", answer, ids.correlation_id)
    codes = aadsts_codes(answer.body)
    refusal = classify(answer.status, codes)
    if refusal is None:
        return error
    cooldown = refusal.cooldown
    if refusal is THROTTLED:
        cooldown = min(max(error.retry_after or THROTTLE_DEFAULT, 1.0), THROTTLE_CAP)
    aadsts = next((c for c in codes if c in AADSTS), error.aadsts)
    return TenantRefused(
        refusal,
        error.message,
        aadsts=aadsts,
        endpoint="aad",
        upstream_status=answer.status,
        retry_after=cooldown,
        correlation_id=error.correlation_id,
        trace_id=error.trace_id,
    )
