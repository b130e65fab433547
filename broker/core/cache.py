"""The token cache: the only mutable token state in the broker.

One `Entry` per (profile, kind). Everything runs on the event loop, so no locks: what would be
guarded by a mutex is guarded by "only the loop touches it", and upstream calls are guarded by
the single in-flight task (`Entry.flight`): every caller who needs a token while one is being
fetched awaits that same task, shielded, so a caller that goes away never cancels it.

Timeline of an entry:
    cold → flight → token (FRESH) → timer at refresh_at → flight → new token ...
                  ↘ failure: remembered until retry_at (backoff); callers get the error at once
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from broker.config.errors import UpstreamError, UpstreamFailing, UpstreamTimeout
from broker.core import schedule
from broker.core.clock import Clock, TimerHandle
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds
from broker.observe.logs import iso_time

Fetch = Callable[[RefreshIds], Awaitable[Token]]

# A profile nobody asked for in this long stops being refreshed in the background (unless warm);
# the next caller fetches it cold.
IDLE_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Policy:
    refresh_ahead: float
    min_refresh_margin: float
    min_remaining: float
    wait_timeout: float  # how long a caller waits on a flight: the upstream timeout
    warm: bool
    poll_interval: float | None = None  # re-fetch at least this often (a file-based source)
    idle_after: float = IDLE_AFTER  # not asked for in this long: no background refresh


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """What /v1/profiles, /readyz, `status` and metrics show. Never the token."""

    profile: str
    kind: str
    state: str  # empty | fresh | refreshing | stale | failing
    expires_on: int | None
    expires_in: int | None
    next_attempt_in: int | None
    failures: int
    waiters: int
    last_error: dict[str, Any] | None
    calls: dict[str, int]
    servable: bool


class Entry:
    # Slots: a profile has two entries, but a customer-tenant profile may hold 50,000.
    __slots__ = (
        "_clock",
        "_closed",
        "_fetch",
        "_ids",
        "_log",
        "_metrics",
        "_rand",
        "_timer",
        "calls",
        "failures",
        "flight",
        "kind",
        "last_error",
        "last_used",
        "next_at",
        "policy",
        "profile",
        "retry_at",
        "token",
        "token_correlation_id",
        "waiters",
    )

    def __init__(
        self,
        profile: str,
        kind: str,
        fetch: Fetch,
        policy: Policy,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
        rand: Callable[[], float],
    ) -> None:
        self.profile, self.kind = profile, kind
        self._fetch = fetch
        self.policy = policy
        self._clock = clock
        self._log = log.bind(profile=profile, kind=kind)
        self._metrics = metrics
        self._rand = rand
        self.token: Token | None = None
        self.token_correlation_id: str | None = None  # of the refresh that produced `token`
        self.flight: asyncio.Task[Token] | None = None  # the one refresh in progress
        self._ids: RefreshIds | None = None  # kept across the retries of one refresh
        self.last_error: UpstreamError | None = None
        self.failures = 0  # in a row
        self.retry_at = 0.0  # monotonic: no caller-driven attempt before this after a failure
        self.next_at: float | None = None  # monotonic: when the timer fires next
        self._timer: TimerHandle | None = None
        self.last_used = clock.monotonic()
        self.waiters = 0
        self.calls: Counter[str] = Counter()  # attempt outcomes: ok, refused, failing, ...
        self._closed = False

    # -- callers --------------------------------------------------------------------------

    def peek(self, min_remaining: float | None = None) -> Token | None:
        """The cached token if it has `min_remaining` seconds left (the entry's policy when
        None), else None: the cache-hit path without a coroutine. Callers fall back to
        `get()`."""
        token = self.token
        if token is not None:
            now = self._clock.monotonic()
            need = self.policy.min_remaining if min_remaining is None else min_remaining
            if token.expires_mono - now >= need:
                self.last_used = now
                return token
        return None

    async def get(self, min_remaining: float | None = None) -> tuple[Token, bool]:
        """A token with at least `min_remaining` seconds left, and whether it was a cache hit."""
        need = self.policy.min_remaining if min_remaining is None else min_remaining
        now = self._clock.monotonic()
        self.last_used = now
        token = self.token
        if token is not None and token.expires_mono - now >= need:
            return token, True
        flight = self.flight
        if flight is None:
            error = self.last_error
            if error is not None and now < self.retry_at:
                if error.retry_after is not None:  # what is left of the delay in use
                    error.retry_after = self.retry_at - now
                raise error.with_traceback(None)  # remembered: no upstream call
            flight = self._launch()
        token = await self._wait(flight)
        if not token.servable(self._clock.monotonic(), need):
            raise UpstreamFailing(
                f"upstream token has less than the {need:g} s required left",
                endpoint=self.kind,
            )
        return token, False

    async def refresh(self) -> Token:
        """A forced refresh: joins the flight in progress, or starts one now."""
        self.last_used = self._clock.monotonic()
        return await self._wait(self.flight or self._launch())

    def invalidate(self, token: Token) -> None:
        """Drop `token` (upstream rejected it) so the next caller fetches a new one."""
        if self.token is token:
            self.token = None

    async def _wait(self, flight: asyncio.Task[Token]) -> Token:
        self.waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(flight), self.policy.wait_timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"no token within {self.policy.wait_timeout:g} s; the refresh goes on",
                endpoint=self.kind,
            ) from None
        finally:
            self.waiters -= 1

    # -- the flight -----------------------------------------------------------------------

    def _launch(self) -> asyncio.Task[Token]:
        if self._ids is None:
            self._ids = RefreshIds.new()
        task = asyncio.get_running_loop().create_task(self._attempt(self._ids))
        task.add_done_callback(_retrieve)
        self.flight = task
        return task

    async def _attempt(self, ids: RefreshIds) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._fetch(ids)
        except UpstreamError as e:
            self._failed(e, started)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unmapped error: log it, never leak it to callers
            self._log.exception("refresh_crashed", correlation_id=ids.correlation_id)
            error = UpstreamFailing(
                f"internal error ({type(e).__name__})",
                endpoint=self.kind,
                correlation_id=ids.correlation_id,
            )
            self._failed(error, started)
            raise error from None
        else:
            now = self._clock.monotonic()
            if not token.servable(now, self.policy.min_remaining):
                # A token that can never be served (it lives less than min_remaining) is a
                # failure with backoff, not a success to replace a second later, forever.
                error = UpstreamFailing(
                    f"the new token has {token.remaining(now):.0f} s left, less than "
                    f"min_remaining ({self.policy.min_remaining:g} s): it can never be served",
                    endpoint=self.kind,
                    correlation_id=ids.correlation_id,
                )
                self._failed(error, started)
                raise error
            self._succeeded(token, started, ids)
            return token
        finally:
            self.flight = None

    def _succeeded(self, token: Token, started: float, ids: RefreshIds) -> None:
        unchanged = token is self.token  # a file-based source that has not changed
        self.token = token
        self.failures = 0
        self.last_error = None
        self._ids = None
        p = self.policy
        now = self._clock.monotonic()
        at = schedule.refresh_at(
            token,
            refresh_ahead=p.refresh_ahead,
            min_refresh_margin=p.min_refresh_margin,
            min_remaining=p.min_remaining,
            rand=self._rand,
        )
        if p.poll_interval is not None:
            at = min(at, now + p.poll_interval)
        # Never re-arm sooner than this: a source handing back a nearly expired token must not
        # turn the timer into a busy loop.
        self._arm(max(at, now + schedule.MIN_REFRESH_INTERVAL))
        if unchanged:
            return
        self.token_correlation_id = ids.correlation_id
        self.calls["ok"] += 1
        self._metrics.refreshes.labels(self.profile, self.kind, "ok").inc()
        self._log.info(
            "token_refreshed",
            correlation_id=ids.correlation_id,
            duration_ms=round((self._clock.monotonic() - started) * 1000, 1),
            lifetime_s=round(token.lifetime),
            expires_on=token.expires_on,
            expires_at=iso_time(token.expires_on),
            next_refresh_in_s=round((self.next_at or now) - now, 1),
        )

    def _failed(self, error: UpstreamError, started: float) -> None:
        self.failures += 1
        self.last_error = error
        self.calls[error.code] += 1
        self._metrics.refreshes.labels(self.profile, self.kind, error.code).inc()
        delay = schedule.retry_delay(
            self.failures, retryable=error.retryable, retry_after=error.retry_after, rand=self._rand
        )
        now = self._clock.monotonic()
        self.retry_at = now + delay
        if error.retry_after is not None:
            error.retry_after = delay  # callers are told the delay used, not what was asked
        self._arm(self.retry_at)
        servable = self.token is not None and self.token.servable(now, self.policy.min_remaining)
        self._log.warning(
            "refresh_failed",
            correlation_id=error.correlation_id or (self._ids and self._ids.correlation_id),
            endpoint=error.endpoint,
            error=error.code,
            upstream_status=error.upstream_status,
            aadsts=error.aadsts,
            trace_id=error.trace_id,
            message=error.message,
            failures_in_row=self.failures,
            retry_in_s=round(delay, 1),
            serving_cached=servable,
            duration_ms=round((now - started) * 1000, 1),
        )

    # -- the timer: refresh ahead, retry after backoff ---------------------------------------

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if self._closed else self._clock.call_at(at, self._on_timer)
        self.next_at = at if self._timer else None

    def _on_timer(self) -> None:
        self._timer = None
        self.next_at = None
        if self._closed or self.flight is not None:
            return
        idle = self._clock.monotonic() - self.last_used > self.policy.idle_after
        if self.policy.warm or not idle:
            self._launch()

    def start(self) -> None:
        """Warm entries: fetch now; the timer keeps them fresh from then on."""
        if self.policy.warm and self.flight is None and self.token is None:
            self._launch()

    def retire(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.next_at = None

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.flight is not None:
            self.flight.cancel()
            await asyncio.gather(self.flight, return_exceptions=True)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> EntryStatus:
        now = self._clock.monotonic()
        token = self.token
        servable = token is not None and token.servable(now, self.policy.min_remaining)
        if self.flight is not None:
            state = "refreshing"
        elif self.last_error is not None:
            state = "stale" if servable else "failing"
        elif servable:
            state = "fresh"
        else:
            state = "empty"
        error = self.last_error
        return EntryStatus(
            profile=self.profile,
            kind=self.kind,
            state=state,
            expires_on=token.expires_on if token else None,
            # Whole seconds everywhere (as /v1/token): left rounds down, a wait rounds up.
            expires_in=int(token.remaining(now)) if token else None,
            next_attempt_in=math.ceil(max(0.0, self.next_at - now)) if self.next_at else None,
            failures=self.failures,
            waiters=self.waiters,
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
            },
            calls=dict(self.calls),
            servable=servable,
        )


def _retrieve(task: asyncio.Task) -> None:
    """A flight nobody awaited (a background refresh) must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


class TokenCache:
    """The entries, by (profile, kind)."""

    def __init__(
        self, *, clock: Clock, log: Any, metrics: Any, rand: Callable[[], float] = random.random
    ) -> None:
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._rand = rand
        self.entries: dict[tuple[str, str], Entry] = {}

    def make_entry(self, profile: str, kind: str, fetch: Fetch, policy: Policy) -> Entry:
        """A new entry sharing this cache's clock, log and metrics; not yet installed."""
        return Entry(
            profile,
            kind,
            fetch,
            policy,
            clock=self._clock,
            log=self._log,
            metrics=self._metrics,
            rand=self._rand,
        )

    def install(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            self.entries[(entry.profile, entry.kind)] = entry

    def add(self, profile: str, kind: str, fetch: Fetch, policy: Policy) -> Entry:
        entry = self.make_entry(profile, kind, fetch, policy)
        self.install([entry])
        return entry

    def entry(self, profile: str, kind: str) -> Entry | None:
        return self.entries.get((profile, kind))

    def start(self, profile: str | None = None) -> None:
        for (name, _), entry in self.entries.items():
            if profile is None or name == profile:
                entry.start()

    def retire(self, profile: str) -> None:
        """Drop a profile's entries now. Their timers stop; a refresh already in flight is left
        to finish for the callers awaiting it (nobody else can reach the entry any more)."""
        for key in [k for k in self.entries if k[0] == profile]:
            self.entries.pop(key).retire()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.entries.values()))

    def snapshot(self) -> Iterable[EntryStatus]:
        return [e.status() for e in self.entries.values()]
