"""Azure AD credentials: one small class per kind, one interface.

`acquire(upstream, ids)` returns an Azure AD token for the profile's scope. A credential never
owns an HTTP client; the upstream client is passed in. Files are read when needed (they rotate)
and their contents held only as long as a request needs them, except a rotated refresh token
that could not be written back (kept in memory so it is not lost).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, ClassVar, Protocol

import jwt

from broker.config.errors import LocalCredentialFailed
from broker.config.files import read_text, write_atomically
from broker.config.pem import load_certificate_key
from broker.config.settings import ProfileSettings
from broker.core.streams import load_json
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds, Upstream

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FILE_TIMEOUT = 5.0  # s to read a credential file (off the event loop)
ASSERTION_LIFETIME = 600  # s: Azure AD accepts client assertions valid for up to an hour
# A fan-out over customer tenants rotates the refresh token with every answer: write it back at
# most this often (each write is an fsync on the event loop).
WRITE_BACK_EVERY = 1.0


class Credential(Protocol):
    kind: ClassVar[str]

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token: ...


def _read(path: str, what: str) -> str:
    """A credential file's content, or a LocalCredentialFailed naming the file (not content).
    Never blocks on a FIFO or a device (refused: not a regular file); see `_read_off_loop`."""
    try:
        return read_text(path)
    except (OSError, ValueError) as e:
        raise LocalCredentialFailed(f"cannot read the {what} {path}: {e}", endpoint="aad") from None


async def _read_off_loop(path: str, what: str) -> str:
    """`_read` in a worker thread, within FILE_TIMEOUT: a file on a stalled network mount
    must not stall the event loop (and every caller) with it."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_read, path, what), FILE_TIMEOUT)
    except TimeoutError:
        raise LocalCredentialFailed(
            f"the {what} {path} could not be read within {FILE_TIMEOUT:g} s", endpoint="aad"
        ) from None


class _AzureADCredential:
    """Shared by the credentials that post a grant to the Azure AD token endpoint."""

    kind: ClassVar[str] = ""

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        self.profile = profile
        self.log = log

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        raise NotImplementedError

    def form(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        """The whole token request for `scope` at `token_url` (the profile's own tenant, or a
        customer's: one credential serves every tenant its consent covers)."""
        grant = self.grant(upstream, token_url, scope)
        return {"client_id": self.profile.client_id, "scope": scope, **grant}

    async def before(self, upstream: Upstream) -> None:
        """Called before every token request (a fleet may hold a newer refresh token)."""

    async def answered(
        self, upstream: Upstream, body: dict, ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """Called with every successful answer (a refresh token may have been rotated)."""

    async def post(self, upstream: Upstream, ids: RefreshIds) -> tuple[Token, dict]:
        p = self.profile
        form = self.form(upstream, p.token_url, p.scope)
        return await upstream.azure_ad_token(p.token_url, form, timeout=p.upstream_timeout, ids=ids)

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        await self.before(upstream)
        token, body = await self.post(upstream, ids)
        await self.answered(upstream, body, ids)
        return token


class ClientSecretCredential(_AzureADCredential):
    """client_credentials with a client secret."""

    kind = "client_secret"

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        assert self.profile.client_secret is not None  # config guarantees it
        return {
            "grant_type": "client_credentials",
            "client_secret": self.profile.client_secret.reveal(),
        }


class CertificateCredential(_AzureADCredential):
    """client_credentials with a client assertion JWT signed by the app's certificate key."""

    kind = "certificate"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        super().__init__(profile, log)
        assert profile.certificate_pem is not None  # config validated the file
        password = profile.certificate_password
        self._key = load_certificate_key(
            profile.certificate_pem.reveal().encode("ascii"),
            password.reveal().encode() if password else None,
        )

    def assertion(self, now: float, token_url: str | None = None) -> str:
        p = self.profile
        claims = {
            "aud": token_url or p.token_url,
            "iss": p.client_id,
            "sub": p.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": int(now),
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        return jwt.encode(
            claims,
            self._key.key,
            algorithm=p.signing_algorithm,
            headers={"x5t#S256": self._key.thumbprint_s256},
        )

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(upstream.clock.time(), token_url),
        }


class FederatedTokenCredential(_AzureADCredential):
    """client_credentials with a federated token (Kubernetes workload identity) as the client
    assertion. The file is re-read on every request: the kubelet rotates it."""

    kind = "federated_token_file"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        super().__init__(profile, log)
        self._assertion: str | None = None  # read by before(), off the event loop

    async def before(self, upstream: Upstream) -> None:
        assert self.profile.federated_token_file is not None
        self._assertion = await _read_off_loop(
            self.profile.federated_token_file, "federated token file"
        )

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        assert self.profile.federated_token_file is not None
        assertion = self._assertion or _read(
            self.profile.federated_token_file, "federated token file"
        )
        upstream.redactor.add(assertion)
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }


def shows_mfa(token: Any) -> bool | None:
    """Whether an Azure AD access token's `amr` claim includes "mfa"; None if it has no `amr`
    (not a JWT, or an app-only token). Read, never verified: the broker is not the audience."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        amr = jwt.decode(token, options={"verify_signature": False}).get("amr")
    except jwt.PyJWTError:
        return None
    if not isinstance(amr, list):
        return None
    return "mfa" in amr


class RefreshTokenCredential(_AzureADCredential):
    """The refresh_token grant (app + user). Azure AD may rotate the refresh token; the new one
    is written back to the file atomically, keeping its mode. If that write fails, the new token
    is kept in memory (and used) until the file changes, so it is never lost."""

    kind = "refresh_token"

    # How long a rotated refresh token lives in the shared cache: Azure AD's inactivity limit.
    SHARED_TTL = 90 * 86400.0

    def __init__(self, profile: ProfileSettings, log: Any, shared: Any = None) -> None:
        super().__init__(profile, log)
        self._seen_in_file: str | None = None  # the file content we last read
        self._unsaved: str | None = None  # a rotated token not (yet) written back
        self._written_at = -1e9  # monotonic: the last write-back
        self._flush_timer: Any = None  # a coalesced write-back, armed
        self._flushing: asyncio.Task | None = None  # that write-back, running
        self.mfa: bool | None = None  # whether the profile's own token shows MFA in `amr`
        # With [shared]: the fleet's newest rotated token, by version (newest wins).
        self._shared = shared if shared is not None and shared.enabled else None
        self._shared_name = (
            shared.name(profile.client_id, profile.tenant_id, "refresh_token " + profile.scope)
            if self._shared is not None
            else ""
        )
        self._version = 0  # of the refresh token we hold; 0: the file's own
        self._in_file: str | None = None  # the file's content, read by before() off the loop

    def _current(self, upstream: Upstream) -> str:
        assert self.profile.refresh_token_file is not None
        in_file = self._in_file or _read(self.profile.refresh_token_file, "refresh token file")
        upstream.redactor.pin(f"refresh_token_file:{self.profile.name}", [in_file, self._unsaved])
        if self._unsaved is not None and in_file == self._seen_in_file:
            return self._unsaved
        self._seen_in_file, self._unsaved = in_file, None
        return in_file

    def grant(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        if "offline_access" not in scope.split():
            scope += " offline_access"  # ask for a rotated refresh token
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._current(upstream),
            "scope": scope,
        }
        if self.profile.client_secret is not None:  # a confidential client authenticates too
            form["client_secret"] = self.profile.client_secret.reveal()
        return form

    async def before(self, upstream: Upstream) -> None:
        assert self.profile.refresh_token_file is not None
        self._in_file = await _read_off_loop(self.profile.refresh_token_file, "refresh token file")
        if self._shared is not None:
            await self._adopt_shared(upstream)

    async def answered(
        self, upstream: Upstream, body: dict, ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """A rotated refresh token (from the profile's own tenant or any customer's) is used
        from then on for every tenant, and written back. With `coalesce` (a fan-out over
        customer tenants, where every answer rotates it) the file is written at most once per
        WRITE_BACK_EVERY seconds; newer ones in between are used from memory (Azure AD keeps
        the earlier ones valid, so the file always holds a working token)."""
        if not coalesce:  # the profile's own token: Partner Center requires MFA in it
            self.mfa = shows_mfa(body.get("access_token"))
        rotated = body.get("refresh_token")
        if not isinstance(rotated, str) or not rotated or rotated == self._seen_in_file:
            return
        upstream.redactor.pin(f"refresh_token_file:{self.profile.name}", [rotated])
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
                self._shared_name, self._version, rotated, self.SHARED_TTL
            )

    async def _adopt_shared(self, upstream: Upstream) -> None:
        """Use the fleet's newest refresh token when it is newer than ours: another broker
        rotated it, and the one in our file may already be spent."""
        assert self._shared is not None
        found = await self._shared.get_versioned(self._shared_name)
        if found is None or found[0] <= self._version:
            return
        self._current(upstream)  # note the file's content: a new file still wins over Redis
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

    async def _save(self, rotated: str, ids: RefreshIds | None) -> None:
        path = self.profile.refresh_token_file
        assert path is not None
        try:  # fsync and rename: off the event loop
            await asyncio.to_thread(write_atomically, path, rotated + "\n")
        except OSError as e:
            self._unsaved = rotated
            self.log.error(
                "refresh_token_not_saved",
                file=path,
                error=e.strerror,
                correlation_id=ids.correlation_id if ids else None,
                note="kept in memory; fix the file's permissions before the broker restarts",
            )
            return
        self._seen_in_file, self._unsaved = rotated, None
        self._in_file = rotated


class StaticTokenCredential:
    """An Azure AD token another system places in a file: no Azure AD call at all. The file
    holds the bare token (a JWT with `exp`) or a JSON token answer; it is parsed again only
    when it changes (inode, size or mtime)."""

    kind: ClassVar[str] = "static_token_file"

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        self.profile = profile
        self.log = log
        self._stamp: tuple[int, int, int] | None = None
        self._token: Token | None = None

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        path = self.profile.static_token_file
        assert path is not None
        try:
            st = os.stat(path)
        except OSError as e:
            raise LocalCredentialFailed(
                f"cannot read the static token file {path}: {e.strerror}", endpoint="aad"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp and self._token is not None:
            return self._token
        text = await _read_off_loop(path, "static token file")
        try:
            body = load_json(text) if text.startswith("{") else {"access_token": text}
            token = upstream.received(body)
        except ValueError as e:  # not JSON, or TokenRejected
            raise LocalCredentialFailed(
                f"the static token file {path} holds no usable token: {e}", endpoint="aad"
            ) from None
        self._stamp, self._token = stamp, token
        return token


KINDS: dict[str, type] = {
    c.kind: c
    for c in (
        ClientSecretCredential,
        CertificateCredential,
        FederatedTokenCredential,
        RefreshTokenCredential,
        StaticTokenCredential,
    )
}


def make_credential(profile: ProfileSettings, log: Any, shared: Any = None) -> Credential:
    """The profile's credential; `shared` (a SharedCache) lets a refresh token rotate fleet-wide."""
    log = log.bind(profile=profile.name)
    if profile.credential == "refresh_token":
        return RefreshTokenCredential(profile, log, shared)
    return KINDS[profile.credential](profile, log)
