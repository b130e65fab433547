"""What the desk (`broker.core.serve`) refuses a caller: each refusal carries its HTTP status
and error code, and the HTTP side renders it in its own shape (a `/v1` error, an IMDS or App
Service answer). Nothing here knows about HTTP requests."""

from __future__ import annotations


class Refused(Exception):
    status = 400
    code = "bad_request"
    reason: str | None = None  # counted in broker_rejected_requests_total when set

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UnknownProfile(Refused):
    status, code = 404, "unknown_profile"


class NotAllowed(Refused):
    status, code, reason = 403, "forbidden", "not_allowed"


class NoTenants(Refused):
    status, code = 400, "tenants_not_configured"


class BadTenant(Refused):
    status, code = 400, "bad_tenant"


class TenantNotAllowed(Refused):
    status, code = 403, "tenant_not_allowed"


class ScopeNotAllowed(Refused):
    status, code = 400, "scope_not_allowed"


class TooSoon(Refused):
    status = 429

    def __init__(self, code: str, reason: str, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after)
        self.code, self.reason = code, reason
