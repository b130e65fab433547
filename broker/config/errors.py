"""The broker's error types. Imports nothing from `broker`.

Messages are built from safe parts only (statuses, error codes, key paths): never from a token,
a secret or a raw request. Upstream descriptions are passed through the redactor before they get
here (see `broker.redact`).
"""

from __future__ import annotations

from dataclasses import dataclass


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem: the key path, what is wrong, and where (when known)."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.path}: {self.message}"


class ConfigError(BrokerError):
    """A configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class UpstreamError(BrokerError):
    """A refresh failed. `status` is what the broker answers its own callers with.

    retryable: whether a retry soon may succeed (5xx, 429, timeouts, garbage), as opposed to a
    refusal (400/401/403/404) that will not change until the credential does.
    """

    status = 503
    code = "upstream_failing"
    retryable = True

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
        self.message = message
        self.endpoint = endpoint
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.correlation_id = correlation_id
        self.aadsts = aadsts  # Azure AD's error code (7000215 for AADSTS7000215)
        self.trace_id = trace_id  # Azure AD's trace id: with the correlation id, for support


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
