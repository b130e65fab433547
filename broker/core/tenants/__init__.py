"""Customer tenants (GDAP, Secure Application Model): one profile's credential buys Azure AD
tokens for every customer tenant and resource its consent covers.

- `cache.py`: `TenantCache`, one `Entry` per (tenant, scope), LRU and eviction.
- `fetch.py`: an entry's fetch: remembered refusals, then the fan-out limit, then Azure AD.
- `codes.py`: the one table of refusal codes: class, what is wrong, the fix (`doctor`, docs).
- `aadsts.py`: Azure AD's refusals classified by AADSTS code (`Refusal`, `TenantRefused`).
- `memory.py`: `FailureMemory`, what a refusal blocks (an entry, a tenant, the profile) and
  until when; `invalidate(tenant)` forgets a tenant at once.
- `limiter.py`: `FifoLimiter`, at most `upstream_concurrency` Azure AD calls in flight per
  profile, the rest queued in arrival order.
- `views.py`: what the tenant listing, /v1/profiles and the metrics show (never a token).
"""

from __future__ import annotations

from broker.core.tenants.aadsts import (
    AADSTS,
    CONSENT_REQUIRED,
    INTERACTION_REQUIRED,
    REFRESH_TOKEN_INVALID,
    TENANT_NOT_FOUND,
    THROTTLE_CAP,
    THROTTLE_DEFAULT,
    THROTTLED,
    Refusal,
    TenantRefused,
    aadsts_codes,
    classify,
    refusal_error,
)
from broker.core.tenants.cache import (
    EVICTION_SCAN,
    KIND,
    TENANT_IDLE_AFTER,
    TenantCache,
)
from broker.core.tenants.fetch import fetch_tenant_token
from broker.core.tenants.limiter import FifoLimiter
from broker.core.tenants.memory import Block, FailureMemory, TenantState
from broker.core.tenants.views import error_detail

__all__ = [
    "AADSTS",
    "CONSENT_REQUIRED",
    "EVICTION_SCAN",
    "INTERACTION_REQUIRED",
    "KIND",
    "REFRESH_TOKEN_INVALID",
    "TENANT_IDLE_AFTER",
    "TENANT_NOT_FOUND",
    "THROTTLED",
    "THROTTLE_CAP",
    "THROTTLE_DEFAULT",
    "Block",
    "FailureMemory",
    "FifoLimiter",
    "Refusal",
    "TenantCache",
    "TenantRefused",
    "TenantState",
    "aadsts_codes",
    "classify",
    "error_detail",
    "fetch_tenant_token",
    "refusal_error",
]
