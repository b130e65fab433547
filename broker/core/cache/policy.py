"""What an entry is told (its `Policy`) and what it tells (`EntryStatus`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.core.tokens import Token
from broker.core.upstream import RefreshIds

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


class EntryState(StrEnum):
    """An entry's state, as /v1/profiles, `status` and the logs name it."""

    EMPTY = "empty"  # no token, no failure: nobody asked yet (or it was retired)
    FRESH = "fresh"  # a servable token
    REFRESHING = "refreshing"  # a refresh in flight
    STALE = "stale"  # the last refresh failed; the token is still servable
    FAILING = "failing"  # the last refresh failed and there is no servable token


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """What /v1/profiles, /readyz, `status` and metrics show. Never the token."""

    profile: str
    kind: str
    state: EntryState
    expires_on: int | None
    expires_in: int | None
    next_attempt_in: int | None
    failures: int
    waiters: int
    last_error: dict[str, Any] | None
    calls: dict[str, int]
    servable: bool
    source: str | None = None  # of the token held: "upstream", or "shared" (from Redis)
