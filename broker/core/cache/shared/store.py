"""Tokens in the fleet's Redis: written sealed with a TTL of their remaining life, read back and
re-anchored on this host's clocks; and rotated refresh tokens by version, newest wins.
Every command goes through the `RedisLink`; every value through the `Sealer`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from broker.core.cache import Policy
from broker.core.cache.shared.link import KeyFault, RedisLink, Unavailable
from broker.core.cache.shared.sealer import Sealer
from broker.core.tokens import Token, TokenRejected, jwt_seconds_left, schedule
from broker.core.tokens.clock import Clock

# Undecryptable keys remembered (to log each once), at most this many.
UNDECRYPTABLE_MEMORY = 1024

# A shared version is at most this (an integer a double holds exactly); a stored version more
# than VERSION_AHEAD above the one being written is no broker's (rotations count one by one).
VERSION_MAX = 2**53
VERSION_AHEAD = 10**6
VERSION_DIGITS = re.compile(rb"[0-9]{1,16}")

# Newest wins: a value is written only over an older version (or nothing). A row no broker
# wrote (another type; a version that is no integer, negative, or absurdly ahead) is ignored
# and overwritten, so a hand-written row cannot stop rotations from being shared.
PUT_VERSIONED = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local new = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current == nil or current ~= math.floor(current) or current < 0
   or current > new + tonumber(ARGV[4]) then current = 0 end
if current >= new then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class TokenStore:
    """Reads and writes of sealed values. Runs on the event loop."""

    def __init__(
        self,
        link: RedisLink,
        sealer: Sealer,
        *,
        clock: Clock,
        log: Any,
        count: Callable[[str], None],
    ) -> None:
        self._link = link
        self._sealer = sealer
        self._clock = clock
        self._log = log
        self._count = count
        self._undecryptable: set[str] = set()

    def open(self, name: str, sealed: bytes) -> bytes | None:
        """The plain bytes, or None (logged once per key) for another key's or a tampered value."""
        plain = self._sealer.open(name, sealed)
        if plain is not None:
            return plain
        self._count("undecryptable")
        if name not in self._undecryptable and len(self._undecryptable) < UNDECRYPTABLE_MEMORY:
            self._undecryptable.add(name)
            self._log.warning(
                "shared_entry_undecryptable",
                key=name,
                note="written with another key_file, or tampered with; ignored",
            )
        return None

    # -- tokens ---------------------------------------------------------------------------------

    async def read(self, name: str, policy: Policy) -> Token | None:
        """The token stored under `name` if it is usable without a fetch (see `fresh`)."""
        try:
            sealed = await self._link.call(self._link.redis.get(name), name)
        except KeyFault:  # a row of another type: a miss, and our write replaces it
            return None
        if not isinstance(sealed, bytes):
            return None
        plain = self.open(name, sealed)
        token = None if plain is None else self.token(plain)
        if token is None or not self.fresh(token, policy):
            return None
        return token

    def token(self, plain: bytes) -> Token | None:
        """A Token re-anchored on this host's monotonic clock: its life left is the least of the
        stored wall-clock expiry, the lifetime and, for a JWT, its `exp` by this host's clock
        (none left: None, a miss)."""
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
        try:  # the stored expiry is the writer's (its wall clock may have run ahead): a JWT's
            # own exp, by our clock, bounds it too, as the mirror checks its bearers
            from_jwt = jwt_seconds_left(value, now_wall)
        except TokenRejected:  # an exp that is no finite number: not a token to serve
            return None
        if from_jwt is not None:
            left = min(left, from_jwt)
        if left <= 0:
            return None
        age = lifetime - left
        return Token(
            value=value,
            token_type=token_type,
            received_mono=now_mono - age,
            expires_mono=now_mono + left,
            received_wall=now_wall - age,
            source="shared",
        )

    def fresh(self, token: Token, policy: Policy) -> bool:
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

    async def write(self, name: str, token: Token) -> None:
        """Store `token` under `name` for its remaining life (not when a second or less)."""
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
        sealed = self._sealer.seal(name, plain)
        await self._link.call(self._link.redis.set(name, sealed, px=int(left * 1000)), name)

    async def write_quietly(self, name: str, token: Token) -> None:
        with contextlib.suppress(Unavailable):
            await self.write(name, token)

    # -- rotated refresh tokens: newest wins ----------------------------------------------------

    async def get_versioned(self, name: str) -> tuple[int, str] | None:
        """(version, value) of a shared secret such as a rotated refresh token, or None."""
        link = self._link
        if link.state != "connected" or link.redis is None:
            return None
        try:
            row = await link.call(link.redis.hmget(name, ["v", "c"]), name)
        except Unavailable:
            return None
        if not (isinstance(row, list) and len(row) == 2):
            return None  # not the reply HMGET gives: nothing usable at this key
        version, sealed = row
        if not isinstance(version, bytes) or not isinstance(sealed, bytes):
            return None
        if not VERSION_DIGITS.fullmatch(version) or int(version) > VERSION_MAX:
            return None  # no version a broker writes
        number = int(version)
        plain = self.open(f"{name}#{number}", sealed)
        return None if plain is None else (number, plain.decode("utf-8", "replace"))

    async def put_versioned(self, name: str, version: int, value: str, ttl: float) -> bool:
        """Store `value` as `version` unless Redis holds that version or a newer one already."""
        link = self._link
        if link.state != "connected" or link.redis is None:
            return False
        if not 0 < version <= VERSION_MAX:
            return False
        put = link.script(PUT_VERSIONED)
        sealed = self._sealer.seal(f"{name}#{version}", value.encode())
        try:
            written = await link.call(
                put(keys=[name], args=[version, sealed, int(ttl * 1000), VERSION_AHEAD]), name
            )
        except Unavailable:
            return False
        return bool(written)
