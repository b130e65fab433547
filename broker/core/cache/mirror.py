"""The drop-in mirror's cache: Partner Center tokens exchanged for callers' own bearers.

Keyed by SHA-256(bearer, path): never the bearer itself. Bounded by `max_entries` in an
expiry-aware cachetools TLRUCache (an entry leaves when it stops being servable, or when the
least recently used one must make room), so a flood of distinct bearers cannot grow memory.
Concurrent identical requests share one upstream call. No HTTP request handling here: see
`broker/http/mirror.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from broker.config.settings import MirrorSettings
from broker.core.cache.singleflight import SingleFlight
from broker.core.errors import UpstreamError, UpstreamTimeout
from broker.core.tokens import Token, TokenRejected, jwt_seconds_left, schedule
from broker.core.tokens.clock import Clock
from broker.core.upstream import Answer, Upstream, pcformat

# Refresh ahead as for profiles: 25 % of the lifetime, at least 60 s, before expiry.
REFRESH_AHEAD, MIN_REFRESH_MARGIN = 0.25, 60.0
# A refresh ahead is only made with a bearer that still has this long to live: upstream would
# refuse an expiring one, and the caller will come back with a new bearer anyway.
BEARER_MIN_LEFT = 60.0
# A bearer expired longer ago than Azure AD's allowed clock skew is one Partner Center refuses
# (401): it is never answered from the cache, it goes upstream, which says so.
BEARER_SKEW = 300.0


class Relay(Exception):
    """Upstream answered something other than a token: relay it to the caller as it came."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"upstream answered {answer.status}")
        self.answer = answer


@dataclass(frozen=True, slots=True)
class Cached:
    token: Token
    token_type: str
    refresh_at: float  # monotonic
    correlation_id: str | None = None  # of the exchange that produced it (as the caller sent)


def _partner_center_answer(answer: Answer) -> dict[str, object]:
    """A Partner Center token answer in the media type it came in: JSON or XML."""
    return pcformat.parse_token_answer(answer.content_type, answer.body)


def cache_key(bearer: str, path: str) -> bytes:
    return hashlib.sha256(f"{path}\0{bearer}".encode()).digest()


class MirrorCache:
    def __init__(
        self,
        settings: MirrorSettings,
        upstream: Upstream,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
        rand: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._upstream = upstream
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._rand = rand
        min_remaining = settings.min_remaining
        self._cache: TLRUCache[bytes, Cached] = TLRUCache(
            maxsize=settings.max_entries,
            ttu=lambda _key, value, _now: value.token.expires_mono - min_remaining,
            timer=clock.monotonic,
        )
        self._flights: SingleFlight[bytes, Cached] = SingleFlight()  # one upstream call per key

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, bearer: str, path: str, forward: dict[str, Any]) -> tuple[Cached, bool]:
        """The token for this bearer and path, and whether it came from the cache.
        `forward` is the request to send upstream on a miss: headers and body."""
        key = cache_key(bearer, path)
        now = self._clock.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached.token.servable(now, self.settings.min_remaining):
            try:
                bearer_left = jwt_seconds_left(bearer, self._clock.time())
            except TokenRejected:  # an exp of NaN: not a bearer to answer from the cache
                bearer_left = -BEARER_SKEW
            if bearer_left is None or bearer_left > -BEARER_SKEW:
                if (
                    now >= cached.refresh_at
                    and key not in self._flights
                    and (bearer_left or 0) > BEARER_MIN_LEFT
                ):
                    self._launch(key, path, forward)  # refresh ahead with this caller's bearer
                return cached, True
        flight = self._launch(key, path, forward)
        timeout = self.settings.upstream_timeout
        cached = await SingleFlight.wait(
            flight,
            timeout,
            lambda: UpstreamTimeout(f"no answer within {timeout:g} s", endpoint="mirror"),
        )
        return cached, False

    def in_flight(self) -> list[asyncio.Task[Cached]]:
        """The exchanges in progress (refreshes ahead included)."""
        return self._flights.tasks()

    def _launch(self, key: bytes, path: str, forward: dict[str, Any]) -> asyncio.Task[Cached]:
        """The exchange in flight for this bearer, or a new one."""
        return self._flights.join(key, lambda: self._fetch(key, path, forward))

    async def _fetch(self, key: bytes, path: str, forward: dict[str, Any]) -> Cached:
        started = self._clock.monotonic()
        correlation_id = forward["headers"].get("ms-correlationid")
        status: int | None = None
        outcome = "cancelled"
        try:
            answer = await self._upstream.post(
                "mirror",
                self.settings.upstream_base.rstrip("/") + path,
                data=forward["body"],
                headers=forward["headers"],
                timeout=self.settings.upstream_timeout,
                correlation_id=correlation_id,
            )
            status = answer.status
            if answer.status != 200:
                outcome = "refused" if answer.status < 500 else "failing"
                self._upstream.count("mirror", outcome)
                raise Relay(answer)
            cached = self._parse(answer, correlation_id)  # counted ok, or a bad_token error
            self._cache[key] = cached
            self._metrics.mirror_entries.set(len(self._cache))
            outcome = "ok"
            return cached
        except UpstreamError as e:
            outcome = e.code.removeprefix("upstream_")  # timeout, unreachable, bad_token
            raise
        finally:
            # A refusal must not look like a success: status and outcome on every line, and
            # anything but a token at warning level.
            (self._log.info if outcome == "ok" else self._log.warning)(
                "mirror_exchange",
                path=path,
                status=status,
                outcome=outcome,
                correlation_id=correlation_id,
                duration_ms=round((self._clock.monotonic() - started) * 1000, 1),
            )

    def _parse(self, answer: Answer, correlation_id: str | None) -> Cached:
        token, body = self._upstream.token_answer(
            "mirror", answer, correlation_id, parse=_partner_center_answer
        )
        at = schedule.refresh_at(
            token,
            refresh_ahead=REFRESH_AHEAD,
            min_refresh_margin=MIN_REFRESH_MARGIN,
            min_remaining=self.settings.min_remaining,
            rand=self._rand,
        )
        return Cached(token, str(body.get("token_type") or "bearer"), at, correlation_id)

    async def close(self) -> None:
        tasks = self._flights.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._cache.clear()
