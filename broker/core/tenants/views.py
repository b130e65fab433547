"""What operators see of a profile's customer tenants (the tenant listing, /v1/profiles, the
metrics): each tenant's state and rows, never a token. Pure reads of the cache and its failure
memory at a given monotonic `now`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.core.errors import UpstreamError
from broker.core.tenants.aadsts import STATES
from broker.core.tenants.memory import FailureMemory, TenantState


def tenant_state(memory: FailureMemory, state: TenantState, now: float) -> str:
    """A block's refusal while one holds (the profile's first); else `failing` or the refusal
    class of a failing entry; else `ok` with a servable token, `idle` without."""
    holding = memory.holding(state, now)
    if holding:
        return holding[0].error.code
    servable = failing = 0
    worst: str | None = None
    for entry in state.entries.values():
        token = entry.token
        if token is not None and token.servable(now, entry.policy.min_remaining):
            servable += 1
        elif entry.last_error is not None:
            failing += 1
            worst = worst or entry.last_error.code
    if failing:
        return worst if worst in STATES else "failing"
    return "ok" if servable else "idle"


def describe(memory: FailureMemory, state: TenantState, now: float) -> dict[str, Any]:
    """One tenant's row of the listing."""
    error = state.last_error
    scopes = {}
    next_attempt: float | None = None
    for scope, entry in state.entries.items():
        s = entry.status()
        scopes[scope] = {"state": s.state, "expires_in": s.expires_in}
        if s.next_attempt_in is not None and s.last_error is not None:
            next_attempt = min(next_attempt or 1e12, s.next_attempt_in)
    for block in memory.holding(state, now):
        next_attempt = max(next_attempt or 0.0, round(block.until - now, 1))
    return {
        "tenant": state.name,
        "state": tenant_state(memory, state, now),
        "tokens": sum(1 for e in state.entries.values() if e.token is not None),
        "scopes": scopes,
        "failures_in_row": state.failures,
        "last_error": None if error is None else error_detail(error),
        "next_attempt_in": next_attempt,
    }


def page(
    tenants: Mapping[str, TenantState],
    memory: FailureMemory,
    now: float,
    after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Tenants in name order after `after`, at most `limit`; and the cursor for the next."""
    names = sorted(n for n in tenants if after is None or n > after)
    rows = [describe(memory, tenants[n], now) for n in names[:limit]]
    more = names[limit - 1] if len(names) > limit else None
    return rows, more


def states(tenants: Mapping[str, TenantState], memory: FailureMemory, now: float) -> dict[str, int]:
    """How many tenants are in each state (for /v1/profiles and the metrics)."""
    counts: dict[str, int] = {}
    for state in tenants.values():
        name = tenant_state(memory, state, now)
        counts[name] = counts.get(name, 0) + 1
    return counts


def profile_block(memory: FailureMemory, now: float) -> dict[str, Any] | None:
    """The block on the whole profile while it holds, else None."""
    block = memory.block
    if block is None or now >= block.until:
        return None
    return {
        "state": block.error.code,
        "retry_in": round(block.until - now, 1),
        "last_error": error_detail(block.error),
    }


def error_detail(error: UpstreamError) -> dict[str, Any]:
    return {
        "code": error.code,
        "aadsts": error.aadsts,
        "message": error.message,
        "upstream_status": error.upstream_status,
        "correlation_id": error.correlation_id,
        "trace_id": error.trace_id,
        "since": error.since,  # wall-clock seconds: the first failure of this streak
    }
