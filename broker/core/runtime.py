"""What the broker runs on: one immutable snapshot, swapped whole by a reload.

A `Runtime` is the configuration in force and everything built from it: per profile a
`ProfileRuntime` (its settings, credential, the `aad` and `partner` cache entries and, with
customer tenants, their cache), the origin guard, the mirror and the /msi identity header. A
reload builds the new snapshot aside and swaps it in one assignment (`Broker.apply`): whoever
holds a snapshot sees one configuration, whole, and whoever awaited reads the current one again
(`broker.core.serve` does, after every wait).

Which settings a reload applies and which only a restart does is declared once, with each
setting, in the config schema (`broker.config.reference.restart_needed`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.config.secret import Secret
from broker.config.settings import ProfileSettings, Settings
from broker.core.cache import Entry, TokenCache
from broker.core.cache.mirror import MirrorCache
from broker.core.cache.shared import SharedCache
from broker.core.credentials import Credential, make_credential
from broker.core.guards import OriginGuard
from broker.core.keepalive import KeepAlive
from broker.core.sources import profile_entries, scoped_entries
from broker.core.tenants import TenantCache
from broker.core.upstream import Upstream


@dataclass(frozen=True, slots=True)
class ProfileRuntime:
    """One profile as it runs: never changed in place; a reload that changes the profile
    builds a new one (a fresh fetch) and retires this one."""

    settings: ProfileSettings
    credential: Credential
    entries: Mapping[str, Entry]  # by kind: "aad", "partner"
    tenants: TenantCache | None = None  # with customer_tenants only
    keep_alive: KeepAlive | None = None  # a refresh_token credential only
    # Its own tenant's other scopes and CAE tokens, by (scope, cae): made when first asked
    # (`own_entry`), bounded by the configured `scopes` (see `broker.core.resources`).
    scoped: dict[tuple[str, bool], Entry] = field(default_factory=dict)
    make_scoped: Callable[[str, bool], Entry] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def own_entry(self, scope: str, cae: bool) -> Entry:
        """The entry of `scope` (an allowed spelling, see `broker.core.resources`) of the
        profile's own tenant, a CAE one when `cae`; made when first asked."""
        entry = self.scoped.get((scope, cae))
        if entry is None:
            assert self.make_scoped is not None
            entry = self.scoped[(scope, cae)] = self.make_scoped(scope, cae)
        return entry

    def all_entries(self) -> list[Entry]:
        return [*self.entries.values(), *self.scoped.values()]

    def start(self) -> None:
        for entry in self.entries.values():
            entry.start()
        if self.keep_alive is not None:
            self.keep_alive.start()

    def retire(self) -> None:
        """Timers stop; a refresh in flight is left to land for the callers awaiting it."""
        for entry in self.all_entries():
            entry.retire()
        if self.tenants is not None:
            self.tenants.retire()
        if self.keep_alive is not None:
            self.keep_alive.retire()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.all_entries()))
        if self.keep_alive is not None:
            await self.keep_alive.close()
        if self.tenants is not None:
            await self.tenants.close()
        closing = getattr(self.credential, "close", None)  # a rotated refresh token held back
        if closing is not None:
            await closing()


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    profiles: Mapping[str, ProfileRuntime]
    guard: OriginGuard
    mirror: MirrorCache | None = None
    msi_header: Secret | None = None  # what /msi callers must send as X-IDENTITY-HEADER
    restart_pending: tuple[str, ...] = ()

    def entries(self) -> Iterator[Entry]:
        for profile in self.profiles.values():
            yield from profile.entries.values()


@dataclass(frozen=True, slots=True)
class Builder:
    """Builds a profile's runtime from its settings: what every profile shares (the upstream
    session, the fleet cache, the clock and log) travels in here."""

    factory: TokenCache  # makes entries with the broker's clock, log, metrics and jitter
    upstream: Upstream
    shared: SharedCache
    clock: Any
    log: Any
    metrics: Any
    rand: Callable[[], float]

    def profile(self, profile: ProfileSettings) -> ProfileRuntime:
        credential = make_credential(profile, self.log, self.shared)
        built = profile_entries(
            self.factory, profile, self.upstream, self.log, credential, shared=self.shared
        )
        tenants = None
        if profile.serves_customers:
            tenants = TenantCache(
                profile,
                credential,
                self.upstream,
                clock=self.clock,
                log=self.log,
                metrics=self.metrics,
                rand=self.rand,
                shared=self.shared,
            )
        entries = {e.kind: e for e in built}
        keep_alive = None
        if profile.credential == "refresh_token" and "aad" in entries:
            keep_alive = KeepAlive(
                credential, entries["aad"], profile.keep_alive_days, clock=self.clock, log=self.log
            )
        make_scoped = None
        if profile.credential != "static_token_file":
            make_scoped = scoped_entries(self.factory, profile, self.upstream, credential)
        return ProfileRuntime(
            profile, credential, entries, tenants, keep_alive, make_scoped=make_scoped
        )
