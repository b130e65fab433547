"""The entries, by (profile, kind): made with one clock, log, metrics and jitter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from typing import Any

from broker.core.cache.entry import Entry
from broker.core.cache.policy import EntryStatus, Fetch, Policy
from broker.core.cache.singleflight import SingleFlight
from broker.core.cache.timers import Timers
from broker.core.tokens import Token
from broker.core.tokens.clock import Clock


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
        # Shared by the entries: one timer heap, one table of flights (keyed by entry).
        self._timers = Timers(clock)
        self._flights: SingleFlight[Entry, Token] = SingleFlight()

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
            timers=self._timers,
            flights=self._flights,
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
