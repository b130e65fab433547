"""The refresh_token grant (app + user, the Secure Application Model) and the refresh token it
redeems, which Azure AD rotates: `RotatingRefreshToken` knows which one to redeem next and
where a rotated one goes; `RefreshTokenCredential` is the grant around it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from broker.config.files import read_text, write_atomically
from broker.config.settings import ProfileSettings
from broker.core.cache.shared import SharedCache, shared_key
from broker.core.credentials.base import read_file, read_off_loop
from broker.core.credentials.grants import AzureADGrant
from broker.core.credentials.lineage import load_lineage, record_lineage
from broker.core.credentials.refresh_token_text import (
    REFRESH_TOKEN_LIMIT,
    shows_mfa,
    usable_refresh_token,
)
from broker.core.errors import TokenFormatError
from broker.core.tokens.clock import TimerHandle
from broker.core.upstream import RefreshIds, Upstream

__all__ = [
    "REFRESH_TOKEN_LIMIT",
    "RefreshTokenCredential",
    "RotatingRefreshToken",
    "shows_mfa",
    "usable_refresh_token",
]

# A fan-out over customer tenants rotates the refresh token with every answer: write it back at
# most this often (each write is an fsync on the event loop).
WRITE_BACK_EVERY = 1.0
# A redemption that rotated nothing still keeps the token alive: it is recorded by setting the
# file's mtime (so it survives a restart), at most this often.
TOUCH_EVERY = 3600.0


class RotatingRefreshToken:
    """A profile's refresh token as Azure AD rotates it. The one redeemed is the file's,
    unless a newer one is held: rotated here and not (yet) written back, or adopted from the
    fleet ([shared], newest version wins). A rotated token is written back to the file
    atomically, keeping its mode; if that fails it is kept in memory (and used) until the file
    changes, so it is never lost. Event loop only; nothing here is shared between threads."""

    # How long a rotated refresh token lives in the shared cache: Azure AD's inactivity limit.
    SHARED_TTL = 90 * 86400.0

    def __init__(
        self, profile: ProfileSettings, log: Any, shared: SharedCache | None = None
    ) -> None:
        assert profile.refresh_token_file is not None  # config guarantees it
        self.path = profile.refresh_token_file
        self.profile = profile
        self.log = log
        self._missing = f"run `pc-token-broker consent {profile.name}` to obtain it"
        self._in_file: str | None = None  # the file's content, read by read() off the loop
        self._seen_in_file: str | None = None  # the file content we last read or wrote
        self._unsaved: str | None = None  # a rotated token not (yet) written back
        self._written_at = -1e9  # monotonic: the last write-back
        self._flush_timer: TimerHandle | None = None  # a coalesced write-back, armed
        self._flushing: asyncio.Task[None] | None = None  # that write-back, running
        # With [shared]: the fleet's newest rotated token, by version (newest wins).
        self._shared = shared if shared is not None and shared.enabled else None
        # With [shared]: the token's lineage names it (and the profile's tokens) in Redis.
        self.lineage = ""
        self.shared_name = ""
        if self._shared is not None:
            self.lineage = load_lineage(self.path, self._fingerprint, log)
            credential = self._shared.credential_id("refresh_token", self.lineage)
            key = shared_key(profile, "refresh_token", credential=credential)
            self.shared_name = self._shared.name(*key)
        self._version = 0  # of the refresh token we hold; 0: the file's own
        # Wall-clock seconds: the last redemption Azure AD answered, and the last rotation (this
        # process). The file's mtime carries the last redemption across restarts (last_redeemed).
        self.redeemed_at: float | None = None
        self.rotated_at: float | None = None
        self._touched_at = -1e18  # monotonic: the last mtime set without a rotation

    def current(self, upstream: Upstream) -> str:
        """The refresh token to redeem now: one held back while the file is unchanged, else
        the file's (a new file always wins)."""
        in_file = self._in_file or read_file(self.path, "refresh token file", self._missing)
        upstream.redactor.pin(f"refresh_token_file:{self.profile.name}", [in_file, self._unsaved])
        if self._unsaved is not None and in_file == self._seen_in_file:
            return self._unsaved
        self._seen_in_file, self._unsaved = in_file, None
        return in_file

    async def read(self, upstream: Upstream) -> None:
        """Before each request: the file, off the event loop; and the fleet's newest."""
        self._in_file = await read_off_loop(self.path, "refresh token file", self._missing)
        if self._shared is not None:
            await self._adopt_shared(upstream)

    async def rotated(
        self, upstream: Upstream, body: dict[str, Any], ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """A rotated refresh token (from the profile's own tenant or any customer's) is used
        from then on for every tenant, and written back. With `coalesce` (a fan-out over
        customer tenants, where every answer rotates it) the file is written at most once per
        WRITE_BACK_EVERY seconds; newer ones in between are used from memory (Azure AD keeps
        the earlier ones valid, so the file always holds a working token)."""
        self.redeemed_at = upstream.clock.time()
        rotated = body.get("refresh_token")
        if rotated is None or rotated == self._seen_in_file:
            await self._touch(upstream)
            return
        if not usable_refresh_token(rotated):
            # Never redeemed, written or shared: the last good refresh token stays.
            raise TokenFormatError(
                "Azure AD answered with a rotated refresh token that cannot be used (not 1 to "
                f"{REFRESH_TOKEN_LIMIT} printable ASCII characters); the last good one is kept",
                endpoint="aad",
                upstream_status=200,
                correlation_id=ids.correlation_id,
            )
        assert isinstance(rotated, str)
        upstream.redactor.pin(f"refresh_token_file:{self.profile.name}", [rotated])
        self.rotated_at = self.redeemed_at
        now = upstream.clock.monotonic()
        if coalesce and now - self._written_at < WRITE_BACK_EVERY:
            self._unsaved = rotated
            if self._flush_timer is None:  # the newest reaches the file when the burst ends
                at = self._written_at + WRITE_BACK_EVERY
                self._flush_timer = upstream.clock.call_at(at, lambda: self._flush(upstream))
        else:
            self._written_at = now
            await self._save(rotated, ids)
        if self._shared is not None:  # newest wins: an older version never overwrites
            self._version += 1
            await self._shared.put_versioned(
                self.shared_name, self._version, rotated, self.SHARED_TTL
            )

    def last_redeemed(self) -> float | None:
        """Wall-clock seconds the refresh token was last redeemed (or placed, or rotated):
        the later of this process's record and the file's mtime (which carries it across
        restarts); None if neither is known. Azure AD lets a refresh token die after 90 days
        without a redemption."""
        try:
            mtime: float | None = os.stat(self.path).st_mtime
        except OSError:
            mtime = None
        known = [t for t in (self.redeemed_at, mtime) if t is not None]
        return max(known) if known else None

    async def _touch(self, upstream: Upstream) -> None:
        """A redemption without a rotation: the file's mtime records it (at most once per
        TOUCH_EVERY). A file we may not touch keeps the record in memory only."""
        now = upstream.clock.monotonic()
        if now - self._touched_at < TOUCH_EVERY or self.redeemed_at is None:
            return
        self._touched_at = now
        at = self.redeemed_at
        try:
            await asyncio.to_thread(os.utime, self.path, (at, at))
        except OSError as e:
            self.log.warning("refresh_token_not_touched", file=self.path, error=e.strerror)

    async def _adopt_shared(self, upstream: Upstream) -> None:
        """Use the fleet's newest refresh token when it is newer than ours: another broker
        rotated it, and the one in our file may already be spent."""
        assert self._shared is not None
        found = await self._shared.get_versioned(self.shared_name)
        if found is None or found[0] <= self._version or not usable_refresh_token(found[1]):
            return
        self.current(upstream)  # note the file's content: a new file still wins over Redis
        self._version, self._unsaved = found
        upstream.redactor.add(found[1])

    def _flush(self, upstream: Upstream) -> None:
        """Write back the newest rotated refresh token a burst kept in memory."""
        self._flush_timer = None
        unsaved = self._unsaved
        if unsaved is not None and unsaved != self._seen_in_file:
            self._written_at = upstream.clock.monotonic()
            self._flushing = asyncio.get_running_loop().create_task(self._save(unsaved, None))

    async def settled(self) -> None:
        """Wait for a write-back in progress (tests; shutdown)."""
        if self._flushing is not None:
            await self._flushing

    async def close(self) -> None:
        """At shutdown: the newest rotated refresh token a burst held back reaches the file."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        await self.settled()
        unsaved = self._unsaved
        if unsaved is not None and unsaved != self._seen_in_file:
            await self._save(unsaved, None)

    def _fingerprint(self, token: str) -> str:
        assert self._shared is not None
        return self._shared.credential_id("refresh token held", token)

    def _write(self, rotated: str, expected: str | None) -> bool:
        """The token file, then its lineage record (see lineage.py). In a worker thread.
        False, nothing written, when the file no longer holds `expected` (what we last read or
        wrote): a new token was placed there meanwhile (`consent`, an operator), and a placed
        file wins over a rotation of the token it replaced."""
        if expected is not None:
            try:
                placed = read_text(self.path) != expected
            except (OSError, ValueError):  # unreadable or empty: nothing placed to keep
                placed = False
            if placed:
                return False
        write_atomically(self.path, rotated + "\n")
        if self._shared is not None:
            record_lineage(self.path, self.lineage, self._fingerprint(rotated), self.log)
        return True

    async def _save(self, rotated: str, ids: RefreshIds | None) -> None:
        try:  # fsync and rename: off the event loop
            written = await asyncio.to_thread(self._write, rotated, self._seen_in_file)
        except (OSError, UnicodeError) as e:
            self._unsaved = rotated
            self.log.error(
                "refresh_token_not_saved",
                file=self.path,
                error=e.strerror if isinstance(e, OSError) else type(e).__name__,
                correlation_id=ids.correlation_id if ids else None,
                note="kept in memory; fix the file's permissions before the broker restarts",
            )
            return
        if not written:  # the next request reads the placed token
            self._unsaved = None
            self.log.warning(
                "refresh_token_placed_meanwhile",
                file=self.path,
                note="a new token was placed in the file; the rotation is dropped",
            )
            return
        self._seen_in_file, self._unsaved = rotated, None
        self._in_file = rotated


class RefreshTokenCredential(AzureADGrant):
    """The refresh_token grant (app + user) with the profile's `RotatingRefreshToken`."""

    kind = "refresh_token"

    def __init__(
        self, profile: ProfileSettings, log: Any, shared: SharedCache | None = None
    ) -> None:
        super().__init__(profile, log)
        self.refresh_token = RotatingRefreshToken(profile, log, shared)
        self.mfa = None  # whether the profile's own token shows MFA in `amr`

    def identity(self) -> str:
        """The refresh token's lineage: what the fleet shares this user's tokens under."""
        return self.refresh_token.lineage

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        if "offline_access" not in scope.split():
            scope += " offline_access"  # ask for a rotated refresh token
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self.refresh_token.current(upstream),
            "scope": scope,
        }
        if self.profile.client_secret is not None:  # a confidential client authenticates too
            form["client_secret"] = self.profile.client_secret.reveal()
        return form

    async def before(self, upstream: Upstream) -> None:
        await self.refresh_token.read(upstream)

    async def answered(
        self, upstream: Upstream, body: dict[str, Any], ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """The profile's own answer tells whether its user signed in with MFA (Partner Center
        requires it); every answer may carry a rotated refresh token."""
        if not coalesce:  # the profile's own token, not a customer tenant's
            self.mfa = shows_mfa(body.get("access_token"))
        await self.refresh_token.rotated(upstream, body, ids, coalesce=coalesce)

    async def settled(self) -> None:
        """Wait for a write-back in progress (tests; shutdown)."""
        await self.refresh_token.settled()

    def last_redeemed(self) -> float | None:
        return self.refresh_token.last_redeemed()

    async def close(self) -> None:
        await self.refresh_token.close()
