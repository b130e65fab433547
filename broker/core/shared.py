"""The fleet's shared cache: tokens in Redis, encrypted, with a renewed lease so that one broker
of the fleet fetches while the others wait. `[shared]` absent: `wrap()` is the identity.

One verb, `SharedCache.wrap(fetch, key, policy) -> fetch'`: the wrapped fetch
    1. reads Redis; a token with life left before its refresh point is returned, no upstream call;
    2. else takes the lease (`SET NX PX` with a random value), reads again, fetches upstream while
       renewing the lease every third of `lock_timeout`, writes the token (TTL = remaining life)
       and releases the lease with a compare-and-delete script (a holder whose lease already
       lapsed can never delete another's);
    3. or, when another broker holds the lease, polls Redis for its result until the lease is
       free (then takes it) or a third of `upstream_timeout` has passed on the injected clock
       (then fetches on its own, so its caller, who waits `upstream_timeout`, still gets one).
Redis down, slow, refusing or answering nonsense at any step: the fetch goes upstream alone;
the cache turns `degraded` (a warning, a metric, a state in `/v1/profiles`) and a background task
pings Redis until it answers. A Redis problem never becomes a caller's error while upstream works.
`_call` is the one place that decides "unavailable", and it counts *any* exception raised out of
the client as a Redis failure, not only redis-py's own classes: a protocol mismatch or a hostile
server makes a client library raise AttributeError, TypeError, ValueError or UnicodeError from
inside its parser (redis-py 8.2 did, in its HELLO handshake), and a library release must never
be able to stop the broker.

Values: AES-256-GCM with the fleet's key, the Redis key as associated data (an entry copied to
another key does not decrypt). Keys: the prefix and an HMAC of (client id, tenant, kind or
scope) under a key derived from the fleet's key, so Redis never holds a tenant id or a token in
plain text, and a broker with another key_file names other keys and never sees these entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag

from broker.config.settings import SharedSettings
from broker.core import schedule
from broker.core.cache import Fetch, Policy
from broker.core.clock import Clock
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds

FORMAT = b"\x01"  # value layout version: FORMAT + 12-byte nonce + ciphertext (with its tag)
NONCE_BYTES = 12
# Waiting on another broker's fetch: poll Redis from every 10 ms up to every 100 ms.
POLL_FIRST, POLL_MAX = 0.01, 0.1
# Waiting on another broker's lease: at most this share of upstream_timeout, then fetch alone.
LEASE_WAIT_SHARE = 1 / 3
# Degraded: ping Redis this often (seconds, real time) until it answers.
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 5.0
# Undecryptable keys remembered (to log each once), at most this many.
UNDECRYPTABLE_MEMORY = 1024

# Compare-and-delete / compare-and-extend: only the holder of the lease's random value acts.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# Newest wins: a value is written only over an older version (or nothing).
_PUT_VERSIONED = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _client(settings: SharedSettings, timeout: float) -> Any:
    """A redis-py asyncio client, one try per call (our fallback is upstream, not a retry loop),
    speaking RESP2 whatever the library's default (redis-py 8 moved to RESP3): every Redis server
    speaks it, and the replies keep the shapes this module reads (bytes, lists, integers).
    redis-py is imported here, not at module level: a broker without [shared] never loads it
    (it is a fifth of the start-up time)."""
    from redis import asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.Redis.from_url(
        settings.redis_url,
        username=settings.username,
        password=settings.password.reveal() if settings.password else None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        decode_responses=False,
    )


class Unavailable(Exception):
    """Redis did not answer in time or refused: the caller goes upstream alone."""


@dataclass(frozen=True, slots=True)
class SharedStatus:
    state: str  # connected | degraded | off
    redis_url: str | None
    last_error: str | None
    hits: int
    misses: int
    lease_waits: int
    errors: int


class SharedCache:
    """The Redis half of the two-level cache. Runs on the event loop; nothing here is shared
    between threads. `_state` and `_last_error` are written only by `_degrade` / `_recovered`."""

    def __init__(
        self,
        settings: SharedSettings | None,
        *,
        clock: Clock,
        log: Any,
        metrics: Any,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._log = log.bind(component="shared")
        self._metrics = metrics
        self._redis: Any = None
        self._state = "off" if settings is None else "connected"
        self._last_error: str | None = None
        self._reconnect: asyncio.Task | None = None
        self._undecryptable: set[str] = set()
        self._counts = {"hit": 0, "miss": 0, "lease_wait": 0, "error": 0}
        metrics.shared_state.set(0 if settings is None else 1)
        if settings is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            key = bytes.fromhex(settings.key.reveal())
            self._aead = AESGCM(key)
            self._name_key = hmac.new(key, b"pc-token-broker redis key names", "sha256").digest()
            self._release = self._extend = self._put_versioned = None

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    @property
    def state(self) -> str:
        return self._state

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client (lazily connected: a Redis down at start-up only means degraded)."""
        s = self.settings
        if s is None:
            return
        try:
            self._redis = _client(s, s.timeout)
        except Exception as e:  # a URL the library cannot use: degraded, and no reconnecting
            self._state = "degraded"
            self._last_error = _describe(e)
            self._metrics.shared_state.set(0)
            self._log.error("shared_cache_unusable", error=self._last_error)
            return
        self._release = self._redis.register_script(_RELEASE)
        self._extend = self._redis.register_script(_EXTEND)
        self._put_versioned = self._redis.register_script(_PUT_VERSIONED)
        try:
            await self._call(self._pong())
        except Unavailable:
            return  # degraded; the reconnect task is running
        self._log.info("shared_cache_connected", redis=_where(s.redis_url))

    async def close(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        if self._redis is not None:
            with contextlib.suppress(Exception):  # closing is best effort, whatever it raises
                await self._redis.aclose()

    def status(self) -> SharedStatus:
        s = self.settings
        c = self._counts
        return SharedStatus(
            state=self._state,
            redis_url=_where(s.redis_url) if s else None,
            last_error=self._last_error,
            hits=c["hit"],
            misses=c["miss"],
            lease_waits=c["lease_wait"],
            errors=c["error"],
        )

    # -- the wrapper --------------------------------------------------------------------------

    def wrap(self, fetch: Fetch, key: tuple[str, str, str], policy: Policy) -> Fetch:
        """`fetch` behind the fleet's cache; `fetch` itself when there is no [shared]."""
        if self.settings is None:
            return fetch
        name = self.name(*key)

        async def shared_fetch(ids: RefreshIds) -> Token:
            return await self._fetch(fetch, name, policy, ids)

        return shared_fetch

    def name(self, client_id: str, tenant: str, what: str) -> str:
        """The Redis key of one token: the prefix and an HMAC, never the ids themselves."""
        assert self.settings is not None
        material = json.dumps([client_id.lower(), tenant.lower(), what]).encode()
        digest = hmac.new(self._name_key, material, hashlib.sha256).hexdigest()
        return f"{self.settings.prefix}:tok:{digest}"

    async def _fetch(self, fetch: Fetch, name: str, policy: Policy, ids: RefreshIds) -> Token:
        assert self.settings is not None
        if self._state != "connected":
            return await fetch(ids)
        try:
            token = await self._read(name, policy)
            if token is not None:
                self._count("hit")
                return token
            self._count("miss")
            lease = await self._wait_for_lease(name, policy)
            if isinstance(lease, Token):
                self._count("hit")
                return lease  # another broker's fetch landed while we waited
        except Unavailable:
            return await fetch(ids)
        if lease is None:  # waited long enough on another broker: fetch on our own
            token = await fetch(ids)
            await self._write_quietly(name, token)
            return token
        renewer = asyncio.get_running_loop().create_task(self._renew(name, lease))
        try:
            token = await fetch(ids)
        except Exception:
            renewer.cancel()
            with contextlib.suppress(Unavailable):  # let the next broker try at once
                await self._call(self._release(keys=[name + ":lease"], args=[lease]))
            raise
        finally:
            renewer.cancel()
        await self._write_quietly(name, token)
        with contextlib.suppress(Unavailable):
            await self._call(self._release(keys=[name + ":lease"], args=[lease]))
        return token

    async def _wait_for_lease(self, name: str, policy: Policy) -> str | Token | None:
        """Our lease value once we hold it; a token if another broker's landed meanwhile; None
        when a third of `wait_timeout` passed (by the injected clock) with the lease held
        elsewhere: the caller waits `wait_timeout` in all, and a partner fetch may wait twice
        (its own lease, then the Azure AD token's) before fetching alone."""
        assert self.settings is not None and self._redis is not None
        lease_name = name + ":lease"
        budget = policy.wait_timeout * LEASE_WAIT_SHARE
        deadline = self._clock.monotonic() + budget
        lease_ms = int(self.settings.lock_timeout * 1000)
        delay = POLL_FIRST
        waited = False
        while True:
            value = secrets.token_hex(16)
            if await self._call(self._redis.set(lease_name, value, nx=True, px=lease_ms)):
                token = await self._read(name, policy)  # landed between our read and the lease?
                if token is not None:
                    await self._call(self._release(keys=[lease_name], args=[value]))
                    return token
                return value
            if not waited:
                waited = True
                self._count("lease_wait")
            if self._clock.monotonic() >= deadline:
                self._log.warning("shared_lease_wait_timeout", waited_s=budget)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)
            token = await self._read(name, policy)
            if token is not None:
                return token

    async def _renew(self, name: str, lease: str) -> None:
        """Extend the lease every third of its life while the fetch runs: a fixed lease that
        ran out mid-fetch would let a second broker in."""
        assert self.settings is not None
        lease_ms = int(self.settings.lock_timeout * 1000)
        while True:
            await asyncio.sleep(self.settings.lock_timeout / 3)
            try:
                kept = await self._call(
                    self._extend(keys=[name + ":lease"], args=[lease, lease_ms])
                )
            except Unavailable:
                return
            if not kept:
                self._log.warning("shared_lease_lost", note="another broker may fetch too")
                return

    # -- values -------------------------------------------------------------------------------

    def seal(self, name: str, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return FORMAT + nonce + self._aead.encrypt(nonce, plain, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes | None:
        """The plain bytes, or None (logged once per key) for another key's or a tampered value."""
        try:
            if not sealed.startswith(FORMAT) or len(sealed) < 1 + NONCE_BYTES + 16:
                raise InvalidTag
            nonce = sealed[1 : 1 + NONCE_BYTES]
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], name.encode())
        except InvalidTag:
            self._count("undecryptable")
            if name not in self._undecryptable and len(self._undecryptable) < UNDECRYPTABLE_MEMORY:
                self._undecryptable.add(name)
                self._log.warning(
                    "shared_entry_undecryptable",
                    key=name,
                    note="written with another key_file, or tampered with; ignored",
                )
            return None

    async def _read(self, name: str, policy: Policy) -> Token | None:
        assert self._redis is not None
        sealed = await self._call(self._redis.get(name))
        if not isinstance(sealed, bytes):
            return None
        plain = self.open(name, sealed)
        token = None if plain is None else self._token(plain)
        if token is None or not self._fresh(token, policy):
            return None
        return token

    def _token(self, plain: bytes) -> Token | None:
        """A Token re-anchored on this host's monotonic clock from the stored wall-clock expiry."""
        try:
            data = json.loads(plain)
            value, token_type = data["v"], data["t"]
            expires, lifetime = float(data["e"]), float(data["l"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(value, str) or not isinstance(token_type, str):
            return None
        now_mono, now_wall = self._clock.monotonic(), self._clock.time()
        if not (math.isfinite(expires) and math.isfinite(lifetime) and 0 < lifetime <= 86400):
            return None
        left = min(expires - now_wall, lifetime)  # a writer's clock a little behind ours
        if left <= 0:
            return None
        age = lifetime - left
        return Token(
            value=value,
            token_type=token_type,
            received_mono=now_mono - age,
            expires_mono=now_mono + left,
            received_wall=now_wall - age,
        )

    def _fresh(self, token: Token, policy: Policy) -> bool:
        """Usable without a fetch: before the earliest refresh point any broker would pick, so
        a broker whose refresh is due never takes back the token it is replacing."""
        at = schedule.refresh_at(
            token,
            refresh_ahead=policy.refresh_ahead,
            min_refresh_margin=policy.min_refresh_margin,
            min_remaining=policy.min_remaining,
            rand=lambda: 1.0,
        )
        return self._clock.monotonic() < at

    async def _write(self, name: str, token: Token) -> None:
        assert self._redis is not None
        now_mono = self._clock.monotonic()
        left = token.remaining(now_mono)
        if left <= 1:
            return
        plain = json.dumps(
            {
                "v": token.value,
                "t": token.token_type,
                "e": self._clock.time() + left,
                "l": token.lifetime,
            }
        ).encode()
        await self._call(self._redis.set(name, self.seal(name, plain), px=int(left * 1000)))

    async def _write_quietly(self, name: str, token: Token) -> None:
        with contextlib.suppress(Unavailable):
            await self._write(name, token)

    # -- rotated refresh tokens: newest wins ----------------------------------------------------

    async def get_versioned(self, name: str) -> tuple[int, str] | None:
        """(version, value) of a shared secret such as a rotated refresh token, or None."""
        if self._state != "connected" or self._redis is None:
            return None
        try:
            row = await self._call(self._redis.hmget(name, ["v", "c"]))
        except Unavailable:
            return None
        if not (isinstance(row, list) and len(row) == 2):
            return None  # not the reply HMGET gives: nothing usable at this key
        version, sealed = row
        if not isinstance(version, bytes) or not isinstance(sealed, bytes):
            return None
        try:
            number = int(version)
        except ValueError:
            return None
        plain = self.open(f"{name}#{number}", sealed)
        return None if plain is None else (number, plain.decode("utf-8", "replace"))

    async def put_versioned(self, name: str, version: int, value: str, ttl: float) -> bool:
        """Store `value` as `version` unless Redis holds that version or a newer one already."""
        if self._state != "connected" or self._redis is None:
            return False
        sealed = self.seal(f"{name}#{version}", value.encode())
        try:
            written = await self._call(
                self._put_versioned(keys=[name], args=[version, sealed, int(ttl * 1000)])
            )
        except Unavailable:
            return False
        return bool(written)

    # -- Redis calls, errors, reconnecting ------------------------------------------------------

    async def _call(self, op: Awaitable[Any]) -> Any:
        assert self.settings is not None
        if self._state != "connected":
            if asyncio.iscoroutine(op):
                op.close()
            raise Unavailable
        try:
            return await asyncio.wait_for(op, self.settings.timeout)
        except Exception as e:  # any exception: see the module's docstring
            self._degrade(e)
            raise Unavailable from None

    async def _pong(self) -> None:
        """PING, answered PONG: a server that answers anything else (`+OK`, nil) is no Redis."""
        assert self._redis is not None
        await _expect_pong(self._redis)

    def _count(self, result: str) -> None:
        if result in self._counts:
            self._counts[result] += 1
        self._metrics.shared.labels(result).inc()

    def _degrade(self, error: BaseException) -> None:
        self._count("error")
        text = _describe(error)
        self._last_error = text
        if self._state == "degraded":
            return
        self._state = "degraded"
        self._metrics.shared_state.set(0)
        self._log.warning(
            "shared_cache_degraded",
            error=text,
            note="fetching upstream on our own until Redis answers again",
        )
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        assert self._redis is not None and self.settings is not None
        delay = RECONNECT_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self._pong(), self.settings.timeout)
            except Exception as e:  # whatever the client raises, Redis is not back yet
                self._last_error = _describe(e)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self._state = "connected"
            self._metrics.shared_state.set(1)
            self._reconnect = None
            self._log.info("shared_cache_connected", redis=_where(self.settings.redis_url))
            return


async def ping(settings: SharedSettings) -> str | None:
    """`check-config --online`: None when Redis answers PING with these settings, else why not."""
    timeout = max(settings.timeout, 2.0)
    try:
        client = _client(settings, timeout)
    except Exception as e:
        return f"Redis client refused the settings: {_describe(e)}"
    try:
        await asyncio.wait_for(_expect_pong(client), timeout + 1)
    except Exception as e:  # any exception: see the module's docstring
        return f"Redis did not answer PING: {_describe(e)}"
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return None


class NotRedis(Exception):
    """The server answered PING with something other than PONG."""


async def _expect_pong(client: Any) -> None:
    if await client.ping() is not True:  # redis-py: True for PONG, False for anything else
        raise NotRedis("PING was not answered PONG")


def _describe(error: BaseException) -> str:
    """An error's class and message, without anything from the URL's credentials part."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]


def _where(url: str) -> str:
    """The URL to show: scheme, host and database; never a userinfo part."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
