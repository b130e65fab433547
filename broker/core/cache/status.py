"""An entry's state in words and whole seconds, for the operators' views."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Protocol

from broker.core.cache.policy import EntryState, EntryStatus, Policy
from broker.core.errors import UpstreamError
from broker.core.tokens import Token


class Reported(Protocol):
    """What the report reads of an entry (an `Entry`; named here, not imported: no cycle)."""

    profile: str
    kind: str
    token: Token | None
    policy: Policy
    last_error: UpstreamError | None
    next_at: float | None
    failures: int
    waiters: int
    calls: Counter[str]

    @property
    def flight(self) -> asyncio.Task[Token] | None: ...


def entry_status(entry: Reported, now: float) -> EntryStatus:
    """What /v1/profiles, /readyz, `status` and the metrics show of an entry at `now` (the
    monotonic clock): never its token."""
    token = entry.token
    servable = token is not None and token.servable(now, entry.policy.min_remaining)
    if entry.flight is not None:
        state = EntryState.REFRESHING
    elif entry.last_error is not None:
        state = EntryState.STALE if servable else EntryState.FAILING
    elif servable:
        state = EntryState.FRESH
    else:
        state = EntryState.EMPTY
    error = entry.last_error
    return EntryStatus(
        profile=entry.profile,
        kind=entry.kind,
        state=state,
        expires_on=token.expires_on if token else None,
        # Whole seconds everywhere (as /v1/token): left rounds down, a wait rounds up.
        expires_in=int(token.remaining(now)) if token else None,
        next_attempt_in=math.ceil(max(0.0, entry.next_at - now)) if entry.next_at else None,
        failures=entry.failures,
        waiters=entry.waiters,
        last_error=None
        if error is None
        else {
            "code": error.code,
            "message": error.message,
            "upstream_status": error.upstream_status,
            "endpoint": error.endpoint,
            "aadsts": error.aadsts,
            "trace_id": error.trace_id,
            "correlation_id": error.correlation_id,
            "since": error.since,
        },
        calls=dict(entry.calls),
        servable=servable,
        source=token.source if token else None,
    )
