"""The errors of a refresh that failed: what callers are told, and what the cache remembers.

Messages are built from safe parts only (statuses, error codes, ids): never from a token, a
secret or a raw request. Upstream descriptions are passed through the redactor before they get
here (see `broker.observe.redact`).

An error is immutable once made: one instance is remembered by the cache and told to many
callers, so nobody may change it under the others. `with_retry_after()` gives a copy with
another Retry-After (the time left of a remembered failure, the delay actually used).
"""

from __future__ import annotations

import os
from typing import Any, Self

from broker.config.errors import BrokerError


class UpstreamError(BrokerError):
    """A refresh failed. `status` is what the broker answers its own callers with.

    retryable: whether a retry soon may succeed (5xx, 429, timeouts, garbage), as opposed to a
    refusal (400/401/403/404) that will not change until the credential does.
    """

    status = 503
    code = "upstream_failing"
    retryable = True

    message: str
    endpoint: str
    upstream_status: int | None
    retry_after: float | None
    correlation_id: str | None
    aadsts: int | None  # Azure AD's error code (7000215 for AADSTS7000215)
    trace_id: str | None  # Azure AD's trace id: with the correlation id, for support
    # Wall-clock seconds of the first failure of the streak this error belongs to (set by the
    # cache that remembers it, carried across its copies); None until then.
    since: float | None = None

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        correlation_id: str | None = None,
        aadsts: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self._fields(
            message=message,
            endpoint=endpoint,
            upstream_status=upstream_status,
            retry_after=retry_after,
            correlation_id=correlation_id,
            aadsts=aadsts,
            trace_id=trace_id,
        )

    def cause_gone(self) -> bool:
        """Whether what caused this failure is known to be gone, so the next caller may try
        again before the backoff ends (see LocalCredentialFailed)."""
        return False

    def _fields(self, **fields: Any) -> None:
        """Set fields while the error is being made (subclasses add their own here)."""
        self.__dict__.update(fields)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("__"):  # Python's own: __traceback__, __cause__, __notes__, ...
            super().__setattr__(name, value)
            return
        raise AttributeError(f"{type(self).__name__} is immutable: use with_retry_after()")

    def with_retry_after(self, seconds: float | None) -> Self:
        """A copy of this error with another Retry-After, and a traceback of its own."""
        copy = type(self).__new__(type(self), *self.args)
        BaseException.__init__(copy, *self.args)
        copy.__dict__.update(self.__dict__, retry_after=seconds)
        return copy

    def failing_since(self, previous: UpstreamError | None, now: float) -> Self:
        """A copy that dates its streak: from `previous` (the failure before it, if the streak
        goes on), else from `now` (wall-clock seconds)."""
        since = previous.since if previous is not None else None
        copy = self.with_retry_after(self.retry_after)
        copy.__dict__["since"] = now if since is None else since
        return copy


class UpstreamRefused(UpstreamError):
    """Upstream answered 400/401/403/404: a credential or request problem. Not retried soon."""

    status = 502
    code = "upstream_refused"
    retryable = False


class UpstreamFailing(UpstreamError):
    """Upstream answered 5xx or 429: try again after a backoff (or its Retry-After)."""

    status = 503
    code = "upstream_failing"


class UpstreamUnreachable(UpstreamError):
    """No answer at all: connection refused or reset, DNS failure."""

    status = 503
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    """Upstream did not answer within `upstream_timeout`."""

    status = 504
    code = "upstream_timeout"


class TokenFormatError(UpstreamError):
    """Upstream said 200 but the body is not a usable token (garbage, HTML, no or absurd expiry)."""

    status = 502
    code = "upstream_bad_token"


class LocalCredentialFailed(UpstreamError):
    """The credential could not even be presented (its file is missing or unreadable).

    Shaped as an upstream error so the cache backs off and callers get a 503, like any other
    failed refresh.
    """

    status = 503
    code = "credential_unavailable"
    # The path of a file that did not exist (a refresh token not yet obtained by `consent`).
    missing: str | None = None

    def __init__(self, message: str, *, missing: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self._fields(missing=missing)

    def cause_gone(self) -> bool:
        """The file that was missing exists now: callers need not wait out the backoff (a
        stat, and only while this error is remembered)."""
        return self.missing is not None and os.path.lexists(self.missing)
