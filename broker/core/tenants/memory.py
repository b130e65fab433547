"""What a profile's customer tenants remember of Azure AD's refusals, and until when.

A classified refusal (`TenantRefused`) reaches as far as its class says:
- one (tenant, scope) entry (`consent_required`): the entry remembers it as any failure, until
  its retry (the refusal's `retry_after` is the class's cool-down);
- the whole tenant (`interaction_required`, `tenant_not_found`, and first `throttled` and
  `refresh_token_invalid`): `TenantState.block`, kept with the tenant (forgotten when it is
  invalidated), even after its entries are evicted;
- the whole profile, `FailureMemory.block`, only on evidence beyond one customer: throttling
  of THROTTLE_SPREAD tenants within THROTTLE_WINDOW (`remember`), or a dead refresh token
  confirmed by the partner's own tenant (`confirmed`); a dead refresh token's block lifts early
  when a new refresh-token file is placed, a throttling block when invalidating one of the
  tenants that caused it leaves fewer than THROTTLE_SPREAD (`forget`).
While a block holds, fetches are answered with the remembered error (`again`), no upstream
call. Each tenant also keeps its last error and failures in a row, for the listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.config.settings import ProfileSettings
from broker.core.errors import UpstreamError
from broker.core.tenants.aadsts import (
    REFRESH_TOKEN_INVALID,
    THROTTLE_SPREAD,
    THROTTLE_WINDOW,
    THROTTLED,
    Reach,
    TenantRefused,
)
from broker.core.tokens.clock import Clock

if TYPE_CHECKING:
    from broker.core.cache import Entry


@dataclass(slots=True)
class Block:
    """A remembered refusal that reaches a whole tenant or the whole profile."""

    error: TenantRefused
    until: float  # monotonic
    stamp: tuple[int, int, int] | None = None  # the refresh-token file when it happened
    causes: frozenset[str] = frozenset()  # the tenants whose throttling blocked the profile

    def holds(self, now: float) -> bool:
        return now < self.until


class TenantState:
    """One customer tenant: its entries by scope, and what went wrong there last."""

    __slots__ = ("block", "entries", "failures", "forgotten", "last_error", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: dict[str, Entry] = {}
        self.block: Block | None = None
        self.last_error: UpstreamError | None = None
        self.failures = 0
        # Invalidated: a fetch of it still in flight lands here, where nothing reads it, and
        # its refusal reaches no further (see FailureMemory.remember).
        self.forgotten = False


def file_stamp(path: str | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, to notice that it was replaced; None if unreadable."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FailureMemory:
    """The refusals of one profile's customer tenants: the profile-wide block here, each
    tenant's on its `TenantState`. Event loop only."""

    def __init__(self, profile: ProfileSettings, *, clock: Clock, log: Any) -> None:
        self.profile = profile
        self._clock = clock
        self._log = log
        self.block: Block | None = None  # profile-wide: refresh token invalid, throttled
        # Tenants throttled within the last THROTTLE_WINDOW, and when (a few at most: at
        # THROTTLE_SPREAD the profile is blocked and no more calls go out).
        self._throttled: dict[str, float] = {}

    def check(self, state: TenantState) -> None:
        """Raise the remembered refusal while the profile's or the tenant's block holds."""
        now = self._clock.monotonic()
        for block in (self.block, state.block):
            if block is None or now >= block.until:
                continue
            if block.stamp is not None and block.stamp != file_stamp(
                self.profile.refresh_token_file
            ):
                # A new refresh token was placed: try it.
                if block is self.block:
                    self.block = None
                else:
                    state.block = None
                continue
            raise block.error.again(block.until - now, block)

    def remember(self, state: TenantState, error: UpstreamError) -> None:
        """A fetch for `state` failed: count it, and block as far as its class reaches. The
        answer to a fetch of a tenant invalidated meanwhile is dropped."""
        if state.forgotten:
            return
        # Kept as a copy without the traceback, which would keep the failed fetch's frames
        # (its answer, its request) alive as long as the tenant is remembered.
        error = error.failing_since(state.last_error, self._clock.time())
        state.last_error = error
        state.failures += 1
        if not isinstance(error, TenantRefused):
            return
        now = self._clock.monotonic()
        until = now + (error.retry_after or error.refusal.cooldown)
        reach = error.refusal.reach
        if reach is Reach.TENANT:
            dead = error.refusal is REFRESH_TOKEN_INVALID
            state.block = Block(error, until, self._stamp() if dead else None)
        if error.refusal is THROTTLED and self._spread(state.name, now):
            reach = Reach.PROFILE
            self.block = Block(error, until, causes=frozenset(self._throttled))
        self._log.warning(
            "customer_tenant_refused",
            tenant=state.name,
            state=error.code,
            aadsts=error.aadsts,
            reach=reach,
            cooldown_s=round(until - self._clock.monotonic(), 1),
        )

    def _stamp(self) -> tuple[int, int, int] | None:
        return file_stamp(self.profile.refresh_token_file)

    def _spread(self, tenant: str, now: float) -> bool:
        """Note `tenant` as throttled now: whether THROTTLE_SPREAD tenants were within the
        window."""
        throttled = self._throttled
        for name, at in list(throttled.items()):
            if at <= now - THROTTLE_WINDOW:
                del throttled[name]
        throttled[tenant] = now
        return len(throttled) >= THROTTLE_SPREAD

    def confirmed(self, error: TenantRefused) -> None:
        """The partner's own tenant refused the refresh token too: every tenant waits, until
        the cool-down ends or a new refresh-token file is placed."""
        until = self._clock.monotonic() + (error.retry_after or error.refusal.cooldown)
        self.block = Block(error, until, self._stamp())
        self._log.warning(
            "refresh_token_verdict",
            verdict="confirmed",
            aadsts=error.aadsts,
            correlation_id=error.correlation_id,
            reach=Reach.PROFILE,
            cooldown_s=round(until - self._clock.monotonic(), 1),
        )

    def not_confirmed(self, verdict: str, correlation_id: str) -> None:
        """The partner's own tenant did not confirm a customer's dead-refresh-token verdict
        (`refuted`: it answered with a token; `unconfirmed`: it failed otherwise): the verdict
        stays with the tenant that gave it."""
        self._log.warning(
            "refresh_token_verdict",
            verdict=verdict,
            correlation_id=correlation_id,
            reach=Reach.TENANT,
        )

    def forget(self, tenant: str) -> None:
        """`tenant` was invalidated: what it caused beyond itself is lifted with it."""
        self._throttled.pop(tenant, None)
        block = self.block
        if block is not None and tenant in block.causes:
            causes = block.causes - {tenant}
            self.block = (
                None
                if len(causes) < THROTTLE_SPREAD
                else Block(block.error, block.until, block.stamp, causes)
            )

    def succeeded(self, state: TenantState, scope: str) -> None:
        """A fetch for (state, scope) succeeded: the tenant's failures are over unless it is
        blocked or another of its entries is still failing."""
        others = (e for s, e in state.entries.items() if s != scope)
        if state.block is None and not any(e.last_error is not None for e in others):
            state.last_error, state.failures = None, 0

    def lifted(self, state: TenantState, error: UpstreamError) -> bool:
        """Whether `error` was told from a block that no longer holds for `state` (it ended,
        or was lifted: an invalidation, a new refresh token)."""
        block = getattr(error, "block", None)
        if block is None:
            return False
        now = self._clock.monotonic()
        return not any(block is b for b in self.holding(state, now))

    def holding(self, state: TenantState, now: float) -> list[Block]:
        """The blocks that hold for `state` at `now`: the profile's first, then the tenant's."""
        return [b for b in (self.block, state.block) if b is not None and b.holds(now)]
