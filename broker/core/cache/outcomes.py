"""What one entry's refresh attempts came to: the token taken or the failure remembered (with
its backoff and the timer armed for the retry), the counts `status` shows, the metric and the
log line (`token_refreshed`, `token_from_shared_cache`, `refresh_failed`).

Functions of the entry, not an object beside it: an entry holds its counts in two of its own
slots (`_ok`, `_other_calls`), and a customer-tenant profile may hold 100,000 entries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from broker.core.cache.policy import Policy
from broker.core.errors import UpstreamError
from broker.core.tokens import Token, schedule
from broker.core.tokens.clock import Clock
from broker.core.upstream import RefreshIds
from broker.observe.logs import iso_time


class Attempted(Protocol):
    """What an attempt's outcome reads and writes of an entry (an `Entry`; named here, not
    imported: no cycle)."""

    profile: str
    kind: str
    policy: Policy
    token: Token | None
    token_correlation_id: str | None
    last_error: UpstreamError | None
    failures: int
    retry_at: float
    _clock: Clock
    _log: Any
    _metrics: Any
    _rand: Callable[[], float]
    _ids: RefreshIds | None
    _ok: int
    _other_calls: Counter[str] | None

    @property
    def next_at(self) -> float | None: ...

    def _arm(self, at: float) -> None: ...


def calls(entry: Attempted) -> Counter[str]:
    """Attempt outcomes: ok, refused, failing, ..."""
    counted = Counter(entry._other_calls)
    if entry._ok:
        counted["ok"] = entry._ok
    return counted


def count(entry: Attempted, outcome: str) -> None:
    if entry._other_calls is None:
        entry._other_calls = Counter()
    entry._other_calls[outcome] += 1


def succeeded(entry: Attempted, token: Token, started: float, ids: RefreshIds) -> None:
    """Take `token`, forget the failures, arm the timer for its refresh; count and log it
    unless it is the token already held."""
    unchanged = token is entry.token  # a file-based source that has not changed
    entry.token = token
    entry.failures = 0
    entry.last_error = None
    entry._ids = None
    now = entry._clock.monotonic()
    entry._arm(entry.policy.refresh_at(token, now, entry._rand))
    if unchanged:
        return
    entry.token_correlation_id = ids.correlation_id
    shared = token.source == "shared"  # another broker of the fleet fetched it
    if shared:
        count(entry, "shared")
    else:
        entry._ok += 1
    entry._metrics.refreshes.labels(entry.profile, entry.kind, "ok").inc()
    entry._log.info(
        "token_from_shared_cache" if shared else "token_refreshed",
        correlation_id=ids.correlation_id,
        duration_ms=round((entry._clock.monotonic() - started) * 1000, 1),
        lifetime_s=round(token.lifetime),
        expires_on=token.expires_on,
        expires_at=iso_time(token.expires_on),
        next_refresh_in_s=round((entry.next_at or now) - now, 1),
    )


def failed(entry: Attempted, error: UpstreamError, started: float) -> UpstreamError:
    """Remember the failure and back off; returns the error as callers are told it (with the
    delay actually used as its Retry-After, when upstream gave one)."""
    entry.failures += 1
    count(entry, error.code)
    entry._metrics.refreshes.labels(entry.profile, entry.kind, error.code).inc()
    delay = schedule.retry_delay(
        entry.failures, retryable=error.retryable, retry_after=error.retry_after, rand=entry._rand
    )
    now = entry._clock.monotonic()
    entry.retry_at = now + delay
    if error.retry_after is not None:  # callers are told the delay used, not what was asked
        error = error.with_retry_after(delay)
    error = error.failing_since(entry.last_error, entry._clock.time())  # for `doctor`
    entry.last_error = error
    entry._arm(entry.retry_at)
    servable = entry.token is not None and entry.token.servable(now, entry.policy.min_remaining)
    entry._log.warning(
        "refresh_failed",
        correlation_id=error.correlation_id or (entry._ids and entry._ids.correlation_id),
        endpoint=error.endpoint,
        error=error.code,
        upstream_status=error.upstream_status,
        aadsts=error.aadsts,
        trace_id=error.trace_id,
        message=error.message,
        failures_in_row=entry.failures,
        retry_in_s=round(delay, 1),
        serving_cached=servable,
        duration_ms=round((now - started) * 1000, 1),
    )
    return error
