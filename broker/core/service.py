"""The running broker: settings, the shared upstream session, the token cache built from them.

The HTTP layer (`app.py`) reads from here; nothing here knows about HTTP requests.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from broker import __version__
from broker.config.files import write_private
from broker.config.secret import Secret
from broker.config.settings import Settings
from broker.core.cache import EntryStatus, TokenCache
from broker.core.clock import Clock
from broker.core.credentials import Credential, make_credential
from broker.core.guards import OriginGuard
from broker.core.mirror import MirrorCache
from broker.core.shared import SharedCache
from broker.core.sources import profile_entries
from broker.core.tenants import TenantCache
from broker.core.upstream import Proxies, Upstream
from broker.observe.audit import Audit
from broker.observe.redact import Redactor

# [server] settings the running process cannot change: a reload that changes one reports it
# (log, /v1/profiles, metric, systemd STATUS) until the process restarts.
RESTART_KEYS = (
    "listen",
    "log_format",
    "log_level",
    "socket_mode",
    "socket_group",
    "allow_remote",
    "event_loop",
    "upstream_proxy",
    "upstream_proxy_credentials",
)


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
        self.settings = settings
        self.guard = OriginGuard(settings.server)
        self.clock = clock
        self.log = log
        self.metrics = metrics
        self.redactor = redactor
        self.audit = audit or Audit(enabled=False)
        self.cache = TokenCache(clock=clock, log=log, metrics=metrics, rand=rand)
        self.shared = SharedCache(settings.shared, clock=clock, log=log, metrics=metrics)
        self.upstream: Upstream | None = None
        self.mirror: MirrorCache | None = None
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._background: set[asyncio.Task] = set()
        self.msi_header: Secret | None = None  # what /msi callers must send as X-IDENTITY-HEADER
        # What the process runs: compared with each reloaded file, not with the previous one.
        self.running, self.running_shared = settings.server, settings.shared
        self.restart_pending: list[str] = []
        for key in (*RESTART_KEYS, "shared"):
            metrics.restart_pending.labels(key).set(0)
        self.credentials: dict[str, Credential] = {}
        self.tenants: dict[str, TenantCache] = {}  # profiles with customer_tenants
        metrics.watch_entries(self.cache.snapshot)
        metrics.watch_profiles(self.profile_gauges)
        self._remember_secrets(settings)

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
        old = self.settings.msi
        if (
            self.msi_header is not None
            and old
            and old.generated_header_file == msi.generated_header_file
        ):
            return self.msi_header  # a reload keeps the header tools already hold
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

    async def start(self, session: aiohttp.ClientSession | None = None) -> None:
        """Open the upstream session (unless given), build the entries, fetch warm profiles."""
        if session is None:
            session = aiohttp.ClientSession(
                headers={"User-Agent": f"pc-token-broker/{__version__}"},
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
                trust_env=False,
            )
            self._owns_session = True
        self._session = session
        server = self.settings.server
        self.upstream = Upstream(
            session,
            self.clock,
            metrics=self.metrics,
            redactor=self.redactor,
            proxies=Proxies(server.upstream_proxy, server.upstream_proxy_credentials),
        )
        await self.shared.start()
        built = self._build(self.settings, list(self.settings.profiles))
        self.cache.install(built[0])
        self.credentials.update(built[1])
        self.tenants.update(built[2])
        self.mirror = self._mirror_for(self.settings)
        self.msi_header = self._identity_header(self.settings)
        self.cache.start()
        self.log.info(
            "broker_started",
            profiles=sorted(self.settings.profiles),
            warm=sorted(p.name for p in self.settings.profiles.values() if p.warm),
        )

    def _build(
        self, settings: Settings, names: list[str]
    ) -> tuple[list, dict[str, Credential], dict[str, TenantCache]]:
        """The entries, credentials and tenant caches of the named profiles, not installed."""
        assert self.upstream is not None
        entries: list = []
        credentials: dict[str, Credential] = {}
        tenants: dict[str, TenantCache] = {}
        for name in names:
            profile = settings.profiles[name]
            credential = credentials[name] = make_credential(profile, self.log, self.shared)
            entries += profile_entries(
                self.cache, profile, self.upstream, self.log, credential, shared=self.shared
            )
            if profile.serves_customers:
                tenants[name] = TenantCache(
                    profile,
                    credential,
                    self.upstream,
                    clock=self.clock,
                    log=self.log,
                    metrics=self.metrics,
                    rand=self._rand,
                    shared=self.shared,
                )
        return entries, credentials, tenants

    def apply(self, new: Settings) -> dict[str, list[str]]:
        """Switch to `new` settings (a SIGHUP reload). Everything that can fail is built first;
        the switch itself is synchronous, so no request sees half of it. New profiles appear,
        removed ones go, changed ones start over with a fresh fetch; a refresh that callers are
        waiting on is left to finish. Raises (changing nothing) if a credential cannot be built.
        """
        assert self.upstream is not None, "apply() after start()"
        old = self.settings
        added = sorted(set(new.profiles) - set(old.profiles))
        removed = sorted(set(old.profiles) - set(new.profiles))
        changed = sorted(
            n for n in set(new.profiles) & set(old.profiles) if new.profiles[n] != old.profiles[n]
        )
        entries, credentials, tenants = self._build(new, added + changed)
        mirror = self._mirror_for(new) if new.mirror != old.mirror else self.mirror
        msi_header = self._identity_header(new)
        # -- the switch: no await from here on.
        self._remember_secrets(new)
        self.settings = new
        self.guard = OriginGuard(new.server)
        self.audit.enabled = new.server.audit
        self.msi_header = msi_header
        for name in removed + changed:
            self.cache.retire(name)
            self.credentials.pop(name, None)
            old_tenants = self.tenants.pop(name, None)
            if old_tenants is not None:
                old_tenants.retire()
        self.cache.install(entries)
        self.credentials.update(credentials)
        self.tenants.update(tenants)
        for name in added + changed:
            self.cache.start(name)
        if mirror is not self.mirror:
            if self.mirror is not None:
                task = asyncio.get_running_loop().create_task(self.mirror.close())
                self._background.add(task)  # held until done: a bare task may be collected
                task.add_done_callback(self._background.discard)
            self.mirror = mirror
        running = self.running
        needs_restart = [k for k in RESTART_KEYS if getattr(new.server, k) != getattr(running, k)]
        if new.shared != self.running_shared:
            needs_restart.append("shared")
        self.restart_pending = needs_restart
        for key in (*RESTART_KEYS, "shared"):
            self.metrics.restart_pending.labels(key).set(1 if key in needs_restart else 0)
        return {
            "added": added,
            "removed": removed,
            "changed": changed,
            "needs_restart": needs_restart,
        }

    async def close(self) -> None:
        self.audit.flush()
        await self.cache.close()
        await asyncio.gather(*(t.close() for t in self.tenants.values()))
        for credential in self.credentials.values():  # a rotated refresh token held back
            closing = getattr(credential, "close", None)
            if closing is not None:
                await closing()
        await self.shared.close()
        if self.mirror is not None:
            await self.mirror.close()
        if self._owns_session and self._session is not None:
            await self._session.close()

    def mfa(self, name: str) -> bool | None:
        """Whether the profile's own (Partner Center) Azure AD token shows MFA in `amr`; None
        when unknown or not an app+user credential. Partner Center refuses app+user calls
        without MFA (401, error 900421)."""
        return getattr(self.credentials.get(name), "mfa", None)

    def profile_gauges(self) -> list[dict[str, Any]]:
        """Per-profile figures for /metrics: MFA, customer-tenant counts. No tenant ids."""
        rows = []
        for name in self.settings.profiles:
            row: dict[str, Any] = {"profile": name, "mfa": self.mfa(name)}
            cache = self.tenants.get(name)
            if cache is not None:
                row.update(
                    tokens=len(cache),
                    states=cache.states(),
                    in_flight=cache.limiter.active,
                    queued=cache.limiter.queued,
                    evicted=cache.evicted,
                )
            rows.append(row)
        return rows

    def statuses(self) -> list[EntryStatus]:
        return list(self.cache.snapshot())

    def ready(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Ready when every warm profile holds servable tokens of both kinds."""
        ok = True
        detail: dict[str, dict[str, Any]] = {}
        for s in self.statuses():
            profile = self.settings.profiles.get(s.profile)
            if profile is None or not profile.warm:
                continue
            ok = ok and s.servable
            detail.setdefault(s.profile, {})[s.kind] = s.state
        return ok, detail

    def summary(self) -> str:
        """One line for systemd's STATUS=: profiles by state, the worst error."""
        states: dict[str, int] = {}
        failing = []
        for s in self.statuses():
            if s.kind == "partner":
                states[s.state] = states.get(s.state, 0) + 1
                if s.last_error and not s.servable:
                    failing.append(s.profile)
        parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        text = f"{len(self.settings.profiles)} profiles" + (f" ({parts})" if parts else "")
        if failing:
            text += f"; failing: {', '.join(sorted(failing))}"
        if self.restart_pending:
            text += f"; restart needed for {', '.join(self.restart_pending)}"
        return text
