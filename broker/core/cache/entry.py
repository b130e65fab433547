"""One cache entry: the token of one (profile, kind), its refresh in flight, its timer and its
failure memory. Its timer is one item in its table's `Timers` heap, when to refresh is the
`Policy`'s, what callers said of its tokens is `refused` (revocation.py), what each attempt
came to (the token taken or the failure remembered, counted and logged) is outcomes.py's. See
the package's docstring for the timeline.

An entry is small: a customer-tenant profile may hold `max_customer_tokens` of them. What its
table shares is shared, not copied: the timer (`Timers`, one heap per table), the single flight
(`SingleFlight`, one per table, keyed by the entry), clock, log, metrics and jitter."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.core.cache import outcomes, revocation
from broker.core.cache.policy import EntryStatus, Fetch, Policy
from broker.core.cache.singleflight import SingleFlight
from broker.core.cache.status import entry_status
from broker.core.cache.timers import Timers
from broker.core.errors import UpstreamError, UpstreamFailing, UpstreamTimeout
from broker.core.tokens import Token
from broker.core.tokens.clock import Clock
from broker.core.upstream import RefreshIds


class Entry:
    # Slots: a profile has two entries, but a customer-tenant profile may hold 50,000.
    __slots__ = (
        "_clock",
        "_closed",
        "_fetch",
        "_flights",
        "_ids",
        "_log",
        "_metrics",
        "_ok",
        "_other_calls",
        "_rand",
        "_timers",
        "failures",
        "kind",
        "last_error",
        "last_used",
        "next_at",
        "policy",
        "profile",
        "refused",
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
        timers: Timers | None = None,
        flights: SingleFlight[Entry, Token] | None = None,
    ) -> None:
        """`timers` and `flights`: the table's, shared by its entries (else the entry's own)."""
        self.profile, self.kind = profile, kind
        self._fetch = fetch
        self.policy = policy
        self._clock = clock
        self._log = log.bind(profile=profile, kind=kind)
        self._metrics = metrics
        self._rand = rand
        self.token: Token | None = None
        self.token_correlation_id: str | None = None  # of the refresh that produced `token`
        # The one refresh in flight, if any, under this entry as its key.
        self._flights: SingleFlight[Entry, Token] = SingleFlight() if flights is None else flights
        self._ids: RefreshIds | None = None  # kept across the retries of one refresh
        self.last_error: UpstreamError | None = None
        self.failures = 0  # in a row
        self.retry_at = 0.0  # monotonic: no caller-driven attempt before this after a failure
        self.next_at: float | None = None  # monotonic: when the timer fires next (Timers sets it)
        self._timers = Timers(clock) if timers is None else timers  # (an empty one is falsy)
        self.last_used = clock.monotonic()
        self.waiters = 0
        self._ok = 0  # attempts that brought a new token
        self._other_calls: Counter[str] | None = None  # shared, or an error code
        self.refused: str | None = None  # the digest of the last token a caller refused
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
            if error is not None and now < self.retry_at and not error.cause_gone():
                # Remembered: no upstream call. Each caller gets a copy, told what is left of
                # the delay in use (when upstream gave one).
                left = None if error.retry_after is None else self.retry_at - now
                raise error.with_retry_after(left)
            flight = self._launch()
        token = await self._wait(flight)
        if not token.servable(self._clock.monotonic(), need):
            raise UpstreamFailing(
                f"upstream token has less than the {need:g} s required left",
                endpoint=self.kind,
            )
        return token, False

    async def refresh(self) -> Token:
        """A forced refresh: joins the flight in progress, or starts one now that replaces the
        cached token (the fleet's cache must not hand that same token back)."""
        self.last_used = self._clock.monotonic()
        token = self.token
        if self.flight is None and token is not None:
            self._ids = replace(self._ids or RefreshIds.new(), refused=revocation.digest_of(token))
        return await self._wait(self._launch())

    def invalidate(self, token: Token) -> None:
        """Drop `token` (upstream rejected it) so the next caller fetches a new one."""
        if self.token is token:
            self.token = None

    def revoke(self, digest: str) -> bool:
        """A caller says the token whose SHA-256 (lower-case hex) is `digest` was refused: if
        it is the cached one, drop it and start its replacement (or join the refresh in
        flight). At most once per token: the digest of a token already dropped, or of an
        older one, changes nothing. True when the token was dropped."""
        token = self.token
        if token is None or not revocation.drops(self.refused, token, digest):
            return False
        self.refused = digest
        self.token = None
        self._log.info("token_refused_by_caller", expires_on=token.expires_on)
        if self.flight is None:  # this refresh must not take the refused token from [shared]
            self._ids = RefreshIds.new(refused=digest)
        self._launch()
        return True

    def names(self, digest: str) -> bool:
        """Whether `digest` names the cached token, and `revoke(digest)` would drop it."""
        token = self.token
        return token is not None and revocation.drops(self.refused, token, digest)

    @property
    def flight(self) -> asyncio.Task[Token] | None:
        """The one refresh in progress, if any."""
        return self._flights.get(self)

    @property
    def calls(self) -> Counter[str]:
        """Attempt outcomes: ok, refused, failing, ... (`outcomes.calls`)"""
        return outcomes.calls(self)

    async def _wait(self, flight: asyncio.Task[Token]) -> Token:
        self.waiters += 1
        try:
            return await SingleFlight.wait(flight, self.policy.wait_timeout, self._timed_out)
        except UpstreamError as e:  # the flight's error, told to each waiter as its own copy
            raise e.with_retry_after(e.retry_after) from None
        finally:
            self.waiters -= 1

    def _timed_out(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"no token within {self.policy.wait_timeout:g} s; the refresh goes on",
            endpoint=self.kind,
        )

    # -- the flight -----------------------------------------------------------------------

    def _launch(self) -> asyncio.Task[Token]:
        """The refresh in progress, or a new one (its ids kept across the retries of one
        refresh)."""
        if self._ids is None:
            self._ids = RefreshIds.new()
        ids = self._ids
        return self._flights.join(self, lambda: self._attempt(ids))

    async def _attempt(self, ids: RefreshIds) -> Token:
        started = self._clock.monotonic()
        try:
            token = await self._fetch(ids)
            if revocation.brought_back(self.refused, token, ids):
                # This flight started before a caller refused the token (a forced refresh, the
                # timer) and found it still in the fleet's cache: fetch past it, once.
                token = await self._fetch(replace(ids, refused=self.refused))
        except UpstreamError as e:
            raise outcomes.failed(self, e, started) from None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unmapped error: log it, never leak it to callers
            self._log.exception("refresh_crashed", correlation_id=ids.correlation_id)
            error = UpstreamFailing(
                f"internal error ({type(e).__name__})",
                endpoint=self.kind,
                correlation_id=ids.correlation_id,
            )
            raise outcomes.failed(self, error, started) from None
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
                raise outcomes.failed(self, error, started)
            outcomes.succeeded(self, token, started, ids)
            return token

    # -- the timer: refresh ahead, retry after backoff ---------------------------------------

    def _arm(self, at: float) -> None:
        if self._closed:
            self._timers.cancel(self)
        else:
            self._timers.arm(self, at)

    def __lt__(self, other: object) -> bool:
        """No order among entries due at the same instant (see `Timed`)."""
        return False

    def due(self) -> None:
        """The timer fired (`Timers` has cleared `next_at`)."""
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
        """No timer from now on; a refresh in flight lands for the callers awaiting it."""
        self._closed = True
        self._timers.cancel(self)

    async def close(self) -> None:
        self._closed = True
        self._timers.cancel(self)
        flight = self.flight
        if flight is not None:
            flight.cancel()
            await asyncio.gather(flight, return_exceptions=True)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> EntryStatus:
        return entry_status(self, self._clock.monotonic())
