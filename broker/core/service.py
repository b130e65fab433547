"""The running broker: the runtime snapshot in force, the shared upstream session, and what is
built from them. `apply()` (a SIGHUP reload) swaps the snapshot whole; `desk` hands tokens out.

The HTTP layer reads from here; nothing here knows about HTTP requests.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from broker import __version__
from broker.config.files import write_private
from broker.config.reference import RESTART_NAMES, restart_needed
from broker.config.secret import Secret
from broker.config.settings import Settings
from broker.core import report, shutdown
from broker.core.cache import Entry, EntryStatus, TokenCache
from broker.core.cache.mirror import MirrorCache
from broker.core.cache.shared import SharedCache
from broker.core.credentials import Credential
from broker.core.guards import OriginGuard
from broker.core.runtime import Builder, Runtime
from broker.core.serve import Desk
from broker.core.tenants import TenantCache
from broker.core.tokens.clock import Clock
from broker.core.upstream import Proxies, Upstream
from broker.observe.audit import Audit
from broker.observe.redact import Redactor


class Broker:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
        redactor: Redactor,
        audit: Audit | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        # The snapshot in force: replaced whole, never changed in place. Profiles are built by
        # start(), once the upstream session exists.
        self.runtime = Runtime(settings, {}, OriginGuard(settings.server))
        self.clock = clock
        self.log = log
        self.metrics = metrics
        self.redactor = redactor
        self.audit = audit or Audit(enabled=False)
        self.desk = Desk(lambda: self.runtime, clock=clock, metrics=metrics, audit=self.audit)
        # Makes cache entries with the clock, log, metrics and jitter (the entries themselves
        # live in the runtime's profiles).
        self._factory = TokenCache(clock=clock, log=log, metrics=metrics, rand=rand)
        self.shared = SharedCache(settings.shared, clock=clock, log=log, metrics=metrics)
        self.upstream: Upstream | None = None
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._background: set[asyncio.Task[None]] = set()
        # What the process runs: compared with each reloaded file, not with the previous one.
        self.running = settings
        for key in RESTART_NAMES:
            metrics.restart_pending.labels(key).set(0)
        metrics.watch_entries(self.statuses)
        metrics.watch_profiles(self.profile_gauges)
        self._remember_secrets(settings)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    # -- views of the snapshot in force, for status pages and tests ---------------------------

    def entry(self, name: str, kind: str) -> Entry | None:
        profile = self.runtime.profiles.get(name)
        return None if profile is None else profile.entries.get(kind)

    @property
    def tenants(self) -> Mapping[str, TenantCache]:
        """The tenant caches of the profiles with customer_tenants."""
        return {n: p.tenants for n, p in self.runtime.profiles.items() if p.tenants is not None}

    @property
    def credentials(self) -> Mapping[str, Credential]:
        return {n: p.credential for n, p in self.runtime.profiles.items()}

    # -- building -----------------------------------------------------------------------------

    def _remember_secrets(self, settings: Settings) -> None:
        """Pin the config's secrets in the redactor for as long as this config is current."""
        values = [
            secret.reveal()
            for profile in settings.profiles.values()
            for secret in (profile.client_secret, profile.access_key, profile.certificate_password)
            if secret is not None
        ]
        if settings.msi is not None and settings.msi.identity_header is not None:
            values.append(settings.msi.identity_header.reveal())
        self.redactor.pin("config", values)

    def _mirror_for(self, settings: Settings) -> MirrorCache | None:
        if not settings.mirror.enabled or self.upstream is None:
            return None
        return MirrorCache(
            settings.mirror,
            self.upstream,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            rand=self._rand,
        )

    def _identity_header(self, settings: Settings) -> Secret | None:
        """The /msi identity secret: configured, or generated once and written (0600) where the
        operator asked, for tools to read (`pc-token-broker msi-env`)."""
        msi = settings.msi
        if msi is None:
            return None
        if msi.identity_header is not None:
            return msi.identity_header
        old, held = self.runtime.settings.msi, self.runtime.msi_header
        if held is not None and old and old.generated_header_file == msi.generated_header_file:
            return held  # a reload keeps the header tools already hold
        value = secrets.token_urlsafe(32)
        assert msi.generated_header_file is not None
        try:
            write_private(msi.generated_header_file, value + "\n")
        except OSError as e:
            self.log.error(
                "identity_header_not_written",
                file=msi.generated_header_file,
                error=e.strerror,
                note="/msi/token answers 404 until this is fixed",
            )
            return None
        self.redactor.pin("generated_identity_header", [value])
        self.log.info("identity_header_written", file=msi.generated_header_file)
        return Secret(value)

    def _builder(self) -> Builder:
        assert self.upstream is not None, "profiles are built after start()"
        upstream, shared = self.upstream, self.shared
        return Builder(
            self._factory, upstream, shared, self.clock, self.log, self.metrics, self._rand
        )

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Open the upstream session (unless given), build the profiles, fetch warm ones."""
        if session is None:
            session = aiohttp.ClientSession(
                headers={"User-Agent": f"pc-token-broker/{__version__}"},
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
                trust_env=False,
            )
            self._owns_session = True
        self._session = session
        settings = self.runtime.settings
        self._pin_shared_secrets(settings)
        server = settings.server
        self.upstream = Upstream(
            session,
            self.clock,
            metrics=self.metrics,
            redactor=self.redactor,
            proxies=Proxies(server.upstream_proxy, server.upstream_proxy_credentials),
        )
        await self.shared.start()
        build = self._builder().profile
        self.runtime = Runtime(
            settings,
            {name: build(profile) for name, profile in settings.profiles.items()},
            self.runtime.guard,
            mirror=self._mirror_for(settings),
            msi_header=self._identity_header(settings),
        )
        for profile in self.runtime.profiles.values():
            profile.start()
        self.log.info(
            "broker_started",
            profiles=sorted(settings.profiles),
            warm=sorted(p.name for p in settings.profiles.values() if p.warm),
        )

    def _pin_shared_secrets(self, settings: Settings) -> None:
        """[shared]'s Redis password and the fleet's key (as the hex its file is read into,
        either case) are secrets like the config's: redacted wherever an upstream echoes
        them. [shared] changes only with a restart, so they are pinned once, here."""
        shared = settings.shared
        if shared is None:
            return
        key = shared.key.reveal()
        password = shared.password.reveal() if shared.password is not None else None
        self.redactor.pin("shared", [key.lower(), key.upper(), password])

    def apply(self, new: Settings) -> dict[str, list[str]]:
        """Switch to `new` settings (a SIGHUP reload). Everything that can fail is built first;
        the switch is one assignment of a new snapshot, so no request sees half of it. New
        profiles appear, removed ones go, changed ones start over with a fresh fetch; a refresh
        that callers are waiting on is left to finish (they check the new snapshot when it
        lands). Raises (changing nothing) if a credential cannot be built."""
        old = self.runtime
        added = sorted(set(new.profiles) - set(old.profiles))
        removed = sorted(set(old.profiles) - set(new.profiles))
        changed = sorted(
            n
            for n in set(new.profiles) & set(old.profiles)
            if new.profiles[n] != old.profiles[n].settings
        )
        build = self._builder().profile
        built = {name: build(new.profiles[name]) for name in added + changed}
        mirror = self._mirror_for(new) if new.mirror != old.settings.mirror else old.mirror
        msi_header = self._identity_header(new)
        pending = tuple(restart_needed(self.running, new))
        # -- the switch: no await from here on.
        self._remember_secrets(new)
        self.audit.enabled = new.server.audit
        self.runtime = Runtime(
            new,
            {name: built.get(name) or old.profiles[name] for name in new.profiles},
            OriginGuard(new.server),
            mirror=mirror,
            msi_header=msi_header,
            restart_pending=pending,
        )
        for name in removed + changed:
            old.profiles[name].retire()
        for name in added + changed:
            built[name].start()
        if mirror is not old.mirror and old.mirror is not None:
            task = asyncio.get_running_loop().create_task(old.mirror.close())
            self._background.add(task)  # held until done: a bare task may be collected
            task.add_done_callback(self._background.discard)
        for key in RESTART_NAMES:
            self.metrics.restart_pending.labels(key).set(1 if key in pending else 0)
        return {
            "added": added,
            "removed": removed,
            "changed": changed,
            "needs_restart": list(pending),
        }

    async def close(self) -> None:
        """Close every part, whatever one part raises (`broker.core.shutdown`)."""
        session = self._session if self._owns_session else None
        await shutdown.close(
            self.runtime, audit=self.audit, shared=self.shared, session=session, log=self.log
        )

    # -- status (`broker.core.report`, on the snapshot in force) ------------------------------

    def mfa(self, name: str, runtime: Runtime | None = None) -> bool | None:
        return report.mfa(runtime or self.runtime, name)

    def profile_gauges(self) -> list[dict[str, Any]]:
        return report.profile_gauges(self.runtime, self.clock.time())

    def refresh_token(self, name: str, runtime: Runtime | None = None) -> dict[str, Any] | None:
        return report.refresh_token(runtime or self.runtime, name, self.clock.time())

    def statuses(self) -> list[EntryStatus]:
        return report.statuses(self.runtime)

    def ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        return report.ready(self.runtime)

    def summary(self) -> str:
        return report.summary(self.runtime)
