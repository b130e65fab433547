"""What the broker asks of a profile's credential (`Credential`), and the reading of credential
files that every kind shares: off the event loop, within a time limit, never blocking on a FIFO.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol

from broker.config.files import read_text
from broker.config.settings import ProfileSettings
from broker.core.errors import LocalCredentialFailed
from broker.core.tokens import Token
from broker.core.upstream import RefreshIds, Upstream

FILE_TIMEOUT = 5.0  # s to read a credential file (off the event loop)


class Credential(Protocol):
    """A profile's Azure AD credential, as its callers use it: the profile's own entries
    (`acquire`), the customer-tenant fetch (`before`, `form`, `answered`: one grant posted to
    any tenant's token endpoint), the service at shutdown (`close`) and in status (`mfa`).
    Every kind has every member, doing nothing where it has nothing to do."""

    kind: ClassVar[str]

    @property
    def mfa(self) -> bool | None:
        """Whether the profile's own token shows MFA in `amr`; None: unknown or app-only."""
        ...

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        """An Azure AD token for the profile's own tenant and scope."""
        ...

    def identity(self) -> str:
        """What identifies this credential among the app's (a secret, a certificate's
        thumbprint, a refresh token's lineage). May be secret: only ever handed to
        `SharedCache.credential_id`, which names it by an HMAC."""
        ...

    async def before(self, upstream: Upstream) -> None:
        """Called before every token request (files are read here, off the event loop)."""
        ...

    def form(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        """The whole token request for `scope` at `token_url` (the profile's own tenant, or
        a customer's)."""
        ...

    async def answered(
        self, upstream: Upstream, body: dict[str, Any], ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """Called with every successful answer (a refresh token may have been rotated)."""
        ...

    async def close(self) -> None:
        """At shutdown: anything held back (a rotated refresh token) reaches its file."""
        ...

    def last_redeemed(self) -> float | None:
        """Wall-clock seconds the profile's refresh token was last redeemed (or placed);
        None: no refresh token, or unknown."""
        ...


class CredentialBase:
    """The members a kind leaves empty: no MFA to report, nothing to read before a request,
    nothing to learn from an answer, nothing to write back at shutdown."""

    kind: ClassVar[str] = ""
    mfa: bool | None = None

    def __init__(self, profile: ProfileSettings, log: Any) -> None:
        self.profile = profile
        self.log = log

    async def acquire(self, upstream: Upstream, ids: RefreshIds) -> Token:
        raise NotImplementedError  # every kind has its own

    def identity(self) -> str:
        """Nothing beyond the app (client id, tenant) and the profile: a federated token."""
        return ""

    def form(self, upstream: Upstream, token_url: str, scope: str) -> dict[str, str]:
        raise NotImplementedError  # every kind has its own

    async def before(self, upstream: Upstream) -> None:
        """Nothing to read before a request."""

    async def answered(
        self, upstream: Upstream, body: dict[str, Any], ids: RefreshIds, *, coalesce: bool = False
    ) -> None:
        """Nothing to learn from an answer."""

    async def close(self) -> None:
        """Nothing held back."""

    def last_redeemed(self) -> float | None:
        """No refresh token."""
        return None


def read_file(path: str, what: str, missing: str = "") -> str:
    """A credential file's content, or a LocalCredentialFailed naming the file (not content);
    `missing`: what to do when it does not exist. Never blocks on a FIFO or a device (refused:
    not a regular file); see `read_off_loop`."""
    try:
        return read_text(path)
    except (OSError, ValueError) as e:
        if missing and isinstance(e, FileNotFoundError):
            why = f"the {what} {path} does not exist yet: {missing}"
            raise LocalCredentialFailed(why, endpoint="aad", missing=path) from None
        raise LocalCredentialFailed(f"cannot read the {what} {path}: {e}", endpoint="aad") from None


async def read_off_loop(path: str, what: str, missing: str = "") -> str:
    """`read_file` in a worker thread, within FILE_TIMEOUT: a file on a stalled network mount
    must not stall the event loop (and every caller) with it."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(read_file, path, what, missing), FILE_TIMEOUT
        )
    except TimeoutError:
        raise LocalCredentialFailed(
            f"the {what} {path} could not be read within {FILE_TIMEOUT:g} s", endpoint="aad"
        ) from None
