"""The broker's link to the fleet's Redis, and THE one place that decides Redis is unavailable.

Every Redis command goes through `RedisLink.call`: bounded by `timeout` on our side, one try
(the fallback is upstream, not a retry loop against a sick Redis), and *any* exception out of
the client is a Redis failure, not only redis-py's own classes: a protocol mismatch or a
hostile server makes a client library raise AttributeError, TypeError, ValueError or
UnicodeError from inside its parser (redis-py 8.2 did, in its HELLO handshake), and a library
release must never be able to stop the broker. The first failure turns the link `degraded`
(a warning, a metric, a state in `/v1/profiles`); calls then raise `Unavailable` at once while
a background task pings Redis until it answers PONG.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from broker.config.settings import SharedSettings

# Degraded: ping Redis this often (seconds, real time) until it answers.
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 5.0


class Unavailable(Exception):
    """Redis did not answer in time or refused: the caller goes upstream alone."""


class OverBudget(Unavailable):
    """This fetch spent its budget for Redis (see `budgeted`): it goes on alone. Not a Redis
    failure: the link stays connected."""


class Budget:
    """Seconds of Redis calls one fetch may still spend (real time, as `timeout` is)."""

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds


# The budget of the fetch this task works for: set by the outermost `budgeted`, inherited by
# the tasks it starts (a partner fetch's Azure AD fetch shares its budget).
_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("shared_budget")


@contextlib.contextmanager
def budgeted(seconds: float) -> Iterator[None]:
    """Redis calls made inside spend one budget of `seconds` in all (an enclosing budget, if
    any, is kept); once spent, `call` raises OverBudget without asking Redis."""
    if _BUDGET.get(None) is not None:
        yield
        return
    reset = _BUDGET.set(Budget(seconds))
    try:
        yield
    finally:
        _BUDGET.reset(reset)


def unbudgeted() -> None:
    """This task's Redis calls spend no fetch's budget (a lease's renewal, off the caller's
    path)."""
    _BUDGET.set(None)


class KeyFault(Unavailable):
    """Redis answered one key's command with an error reply (WRONGTYPE for a row of another
    type, a script's error on a row it cannot read, an ACL refusing the key) and still answers
    a read of that key's TYPE: that key's fault, not Redis': its fetch goes on without it (a
    read is a miss, and the next write replaces the row) and the link stays connected."""


# Keys whose fault is remembered (to log each once), at most this many.
FAULT_MEMORY = 1024


class NotRedis(Exception):
    """The server answered PING with something other than PONG."""


def make_client(settings: SharedSettings, timeout: float) -> Any:
    """A redis-py asyncio client, one try per call (our fallback is upstream, not a retry loop),
    speaking RESP2 whatever the library's default (redis-py 8 moved to RESP3): every Redis server
    speaks it, and the replies keep the shapes the store reads (bytes, lists, integers).
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


class RedisLink:
    """One Redis client and its state: connected | degraded. Runs on the event loop; `state`
    and `last_error` are written only by `start`, `_degrade` and `_reconnect_loop`."""

    def __init__(
        self, settings: SharedSettings, *, log: Any, metrics: Any, count: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self._log = log
        self._metrics = metrics
        self._count = count
        self.redis: Any = None  # the client, from start() on
        self.state = "connected"
        self.last_error: str | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._faulty: set[str] = set()
        self._scripts: dict[str, Any] = {}

    async def start(self) -> None:
        """Open the client (lazily connected: a Redis down at start-up only means degraded)."""
        s = self.settings
        try:
            self.redis = make_client(s, s.timeout)
        except Exception as e:  # a URL the library cannot use: degraded, and no reconnecting
            self.state = "degraded"
            self.last_error = describe(e)
            self._metrics.shared_state.set(0)
            self._log.error("shared_cache_unusable", error=self.last_error)
            return
        try:
            await self.call(self._pong())
        except Unavailable:
            return  # degraded; the reconnect task is running
        self._log.info("shared_cache_connected", redis=where(s.redis_url))

    async def close(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            await asyncio.gather(self._reconnect, return_exceptions=True)
        if self.redis is not None:
            with contextlib.suppress(Exception):  # closing is best effort, whatever it raises
                await self.redis.aclose()

    async def call(self, op: Awaitable[Any], key: str | None = None) -> Any:
        """`op`'s result; Unavailable when degraded, or when `op` fails in any way or takes
        longer than `timeout` (which degrades the link). `key`: the one key `op` reads or
        writes; an error reply to it is `KeyFault` (that key's, see `_key_fault`)."""
        budget, timeout = _BUDGET.get(None), self.settings.timeout
        if budget is not None:
            timeout = min(timeout, budget.left)
        if self.state != "connected" or timeout <= 0:
            if asyncio.iscoroutine(op):
                op.close()
            raise Unavailable if self.state != "connected" else OverBudget
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await asyncio.wait_for(op, timeout)
        except TimeoutError as e:
            if timeout < self.settings.timeout:  # cut short by the budget: not Redis' fault
                raise OverBudget from None
            self._degrade(e)
            raise Unavailable from None
        except Exception as e:  # any exception: see the module's docstring
            if key is not None and await self._key_fault(key, e):
                raise KeyFault from None
            self._degrade(e)
            raise Unavailable from None
        finally:
            if budget is not None:
                budget.left -= loop.time() - started

    def script(self, source: str) -> Any:
        """A Lua script of the client's (EVALSHA, loaded on first use), one per source."""
        if source not in self._scripts:
            self._scripts[source] = self.redis.register_script(source)
        return self._scripts[source]

    async def _key_fault(self, key: str, error: Exception) -> bool:
        """True when `error` is an error reply about `key` alone: Redis' own error reply (not
        a connection, authentication or loading error, which redis-py raises as
        ConnectionError), and Redis still answers `TYPE key`. A server answering every data
        command with an error is no Redis: the TYPE fails too, and the link degrades."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError

        if not isinstance(error, ResponseError) or isinstance(error, RedisConnectionError):
            return False
        try:
            kind = await asyncio.wait_for(self.redis.type(key), self.settings.timeout)
        except Exception:  # whatever the client raises: Redis, not the row, is at fault
            return False
        if not isinstance(kind, bytes | str):
            return False
        self._count("unusable")
        if key not in self._faulty and len(self._faulty) < FAULT_MEMORY:
            self._faulty.add(key)
            self._log.warning(
                "shared_entry_unusable",
                key=key,
                error=describe(error),
                note="a row Redis refuses to use as written (another type?): that key only",
            )
        return True

    async def _pong(self) -> None:
        """PING, answered PONG: a server that answers anything else (`+OK`, nil) is no Redis."""
        await expect_pong(self.redis)

    def _degrade(self, error: BaseException) -> None:
        self._count("error")
        text = describe(error)
        self.last_error = text
        if self.state == "degraded":
            return
        self.state = "degraded"
        self._metrics.shared_state.set(0)
        self._log.warning(
            "shared_cache_degraded",
            error=text,
            note="fetching upstream on our own until Redis answers again",
        )
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self._pong(), self.settings.timeout)
            except Exception as e:  # whatever the client raises, Redis is not back yet
                self.last_error = describe(e)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self.state = "connected"
            self._metrics.shared_state.set(1)
            self._reconnect = None
            self._log.info("shared_cache_connected", redis=where(self.settings.redis_url))
            return


async def ping(settings: SharedSettings) -> str | None:
    """`check-config --online`: None when Redis answers PING with these settings, else why not."""
    timeout = max(settings.timeout, 2.0)
    try:
        client = make_client(settings, timeout)
    except Exception as e:
        return f"Redis client refused the settings: {describe(e)}"
    try:
        await asyncio.wait_for(expect_pong(client), timeout + 1)
    except Exception as e:  # any exception: see the module's docstring
        return f"Redis did not answer PING: {describe(e)}"
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return None


async def expect_pong(client: Any) -> None:
    if await client.ping() is not True:  # redis-py: True for PONG, False for anything else
        raise NotRedis("PING was not answered PONG")


def describe(error: BaseException) -> str:
    """An error's class and message, without anything from the URL's credentials part."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]


def where(url: str) -> str:
    """The URL to show: scheme, host and database; never a userinfo part."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
