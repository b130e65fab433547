"""What a profile's customer tenants remember of Azure AD's refusals, and until when.

A classified refusal (`TenantRefused`) reaches as far as its class says:
- one (tenant, scope) entry (`consent_required`): the entry remembers it as any failure, until
  its retry (the refusal's `retry_after` is the class's cool-down);
- the whole tenant (`interaction_required`, `tenant_not_found`): `TenantState.block`, kept with
  the tenant (forgotten when it is invalidated), even after its entries are evicted;
- the whole profile (`refresh_token_invalid`, `throttled`): `FailureMemory.block`; a dead
  refresh token's block lifts early when a new refresh-token file is placed.
While a block holds, fetches are answered with the remembered error (`again`), no upstream
call. Each tenant also keeps its last error and failures in a row, for the listing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.config.settings import ProfileSettings
from broker.core.errors import UpstreamError
from broker.core.tenants.aadsts import REFRESH_TOKEN_INVALID, Reach, TenantRefused
from broker.core.tokens.clock import Clock

if TYPE_CHECKING:
    from broker.core.cache import Entry


@dataclass(slots=True)
class Block:
    """A remembered refusal that reaches a whole tenant or the whole profile."""

    error: TenantRefused
    until: float  # monotonic
    stamp: tuple[int, int, int] | None = None  # the refresh-token file when it happened

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

    def check(self, state: TenantState) -> None:
        """Raise the remembered refusal while the profile's or the tenant's block holds."""
        now = self._clock.monotonic()
        for block in (self.block, state.block):
            if block is None or now >= block.until:
                continue
            if block.stamp is not None and block.stamp != file_stamp(
                self.profile.refresh_token_file
            ):
                self.block = None  # a new refresh token was placed: try it
                continue
            raise block.error.again(block.until - now)

    def remember(self, state: TenantState, error: UpstreamError) -> None:
        """A fetch for `state` failed: count it, and block as far as its class reaches. The
        answer to a fetch of a tenant invalidated meanwhile is dropped."""
        if state.forgotten:
            return
        state.last_error = error
        state.failures += 1
        if not isinstance(error, TenantRefused):
            return
        until = self._clock.monotonic() + (error.retry_after or error.refusal.cooldown)
        reach = error.refusal.reach
        if reach is Reach.TENANT:
            state.block = Block(error, until)
        elif reach is Reach.PROFILE:
            stamp = (
                file_stamp(self.profile.refresh_token_file)
                if error.refusal is REFRESH_TOKEN_INVALID
                else None
            )
            self.block = Block(error, until, stamp)
        self._log.warning(
            "customer_tenant_refused",
            tenant=state.name,
            state=error.code,
            aadsts=error.aadsts,
            reach=reach,
            cooldown_s=round(until - self._clock.monotonic(), 1),
        )

    def succeeded(self, state: TenantState, scope: str) -> None:
        """A fetch for (state, scope) succeeded: the tenant's failures are over unless it is
        blocked or another of its entries is still failing."""
        others = (e for s, e in state.entries.items() if s != scope)
        if state.block is None and not any(e.last_error is not None for e in others):
            state.last_error, state.failures = None, 0

    def holding(self, state: TenantState, now: float) -> list[Block]:
        """The blocks that hold for `state` at `now`: the profile's first, then the tenant's."""
        return [b for b in (self.block, state.block) if b is not None and b.holds(now)]
