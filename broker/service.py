"""The running broker: settings, the shared upstream session, the token cache built from them.

The HTTP layer (`app.py`) reads from here; nothing here knows about HTTP requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import aiohttp

from . import __version__
from .audit import Audit
from .cache import EntryStatus, TokenCache
from .clock import Clock
from .config import Settings
from .mirror import MirrorCache
from .redact import Redactor
from .sources import add_profile
from .upstream import Upstream


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
        self.clock = clock
        self.log = log
        self.metrics = metrics
        self.redactor = redactor
        self.audit = audit or Audit(enabled=False)
        self.cache = TokenCache(clock=clock, log=log, metrics=metrics, rand=rand)
        self.upstream: Upstream | None = None
        self.mirror: MirrorCache | None = None
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        metrics.watch_entries(self.cache.snapshot)
        for profile in settings.profiles.values():
            for secret in (profile.client_secret, profile.access_key, profile.certificate_password):
                if secret is not None:
                    redactor.add(secret.reveal())

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
        self.upstream = Upstream(session, self.clock, metrics=self.metrics, redactor=self.redactor)
        for profile in self.settings.profiles.values():
            add_profile(self.cache, profile, self.upstream, self.log)
        if self.settings.mirror.enabled:
            self.mirror = MirrorCache(
                self.settings.mirror,
                self.upstream,
                clock=self.clock,
                log=self.log,
                metrics=self.metrics,
                rand=self._rand,
            )
        self.cache.start()
        self.log.info(
            "broker_started",
            profiles=sorted(self.settings.profiles),
            warm=sorted(p.name for p in self.settings.profiles.values() if p.warm),
        )

    async def close(self) -> None:
        self.audit.flush()
        await self.cache.close()
        if self.mirror is not None:
            await self.mirror.close()
        if self._owns_session and self._session is not None:
            await self._session.close()

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
