"""The sandbox's state and knobs: registered apps, token lifetimes, latency, injected faults,
and a record of every call (so tests can count upstream calls and see the headers sent)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from broker.sandbox.devicecode import DeviceFlows

PARTNER_AUDIENCE = "https://api.partnercenter.microsoft.com"
# A Kubernetes-like OIDC issuer whose projected service-account tokens the sandbox trusts.
FEDERATED_ISSUER = "https://oidc.sandbox.invalid/cluster"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
ENDPOINTS = ("aad", "partner")

# Fault modes besides a plain status code:
#   html      200 with an HTML page (a captive portal or a misrouted load balancer)
#   garbage   200 with a body that is not JSON
#   expired   200 with a token that expired a minute ago
#   no_expiry 200 with an opaque token and no expires_in
#   too_long  200 with a 48 h token
#   reset     the connection is dropped without an answer
#   hang      no answer for `delay` seconds (default: a long time)
MODES = ("status", "html", "garbage", "expired", "no_expiry", "too_long", "reset", "hang")


@dataclass
class AppRegistration:
    tenant_id: str
    client_id: str
    client_secret: str | None = None
    certificate_pem: bytes | None = None  # public certificate, for client assertions
    refresh_tokens: set[str] = field(default_factory=set)
    federated_subject: str | None = None  # accepted `sub` of a federated token
    # The user behind the refresh tokens: signed in with MFA (their tokens' amr says so), and
    # a refusal every refresh_token grant gets (700082, 50173, 70008, 700084: token dead).
    mfa: bool = True
    refresh_token_refusal: int | None = None


@dataclass
class CustomerTenant:
    """A customer tenant the partner manages (GDAP): which resources its admin consented to
    for the partner's app, and its policies."""

    tenant_id: str  # a GUID
    domains: tuple[str, ...] = ()
    consents: set[str] = field(default_factory=lambda: {"*"})  # resources, or "*" for all
    relationship: bool = True  # a GDAP relationship with the partner's users (else 90072)
    require_mfa: bool = False  # conditional access: app+user tokens need MFA (else 50076)
    refusal: int | None = None  # answer every request with this AADSTS code (50079, 70043...)

    def consented(self, resource: str) -> bool:
        return "*" in self.consents or resource in self.consents


@dataclass
class Fault:
    mode: str = "status"
    status: int = 500
    times: int | None = 1  # None: until cleared
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class Call:
    endpoint: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]  # grant fields, secrets removed
    status: int = 0
    at: float = field(default_factory=time.time)


class SandboxState:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall  # injectable, so tests with a fake clock and the sandbox agree
        self.signing_key = secrets.token_bytes(32)  # HS256: the broker never verifies it anyway
        self.federated_key = secrets.token_bytes(32)  # the "cluster's" service-account key
        self.revoke_rotated = False  # True: a used refresh token stops working (strict rotation)
        self.apps: dict[str, AppRegistration] = {}
        self.customers: dict[str, CustomerTenant] = {}  # by id and by each domain, lower-case
        self.device = DeviceFlows()  # the device-code flow's codes; tests play the user there
        self.aad_in_flight = 0  # Azure AD requests being answered right now
        self.aad_max_in_flight = 0  # the most at once since the last reset
        self.customer_calls: Counter[tuple[str, str]] = Counter()  # (tenant id, resource)
        # aad_cae: a token for a client that announced cp1 (Azure AD: 20 to 28 h).
        self.lifetimes = {"aad": 3599.0, "partner": 3600.0, "aad_cae": 26 * 3600.0}
        self.latency = {"aad": 0.0, "partner": 0.0}
        # Gates: a call to an endpoint with a gate here is recorded, then waits until the gate
        # opens (tests order events with them instead of guessing a latency).
        self.gates: dict[str, asyncio.Event] = {}
        self.clock_skew = 0.0  # seconds the sandbox's own clock runs ahead of the host
        self.faults: dict[str, deque[Fault]] = {e: deque() for e in ENDPOINTS}
        self.counts: Counter[str] = Counter()
        self.calls: deque[Call] = deque(maxlen=10_000)
        self.issued = 0
        self.issued_values: set[str] | None = None  # tests set a set() to collect every token
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    # -- registrations -----------------------------------------------------------------------

    def register(self, tenant_id: str, client_id: str, **kwargs: Any) -> AppRegistration:
        app = AppRegistration(tenant_id, client_id, **kwargs)
        self.apps[client_id] = app
        return app

    def register_customer(
        self, tenant_id: str, domains: tuple[str, ...] = (), **kwargs: Any
    ) -> CustomerTenant:
        customer = CustomerTenant(tenant_id, tuple(domains), **kwargs)
        for name in (tenant_id, *domains):
            self.customers[name.lower()] = customer
        return customer

    # -- faults ------------------------------------------------------------------------------

    def fail(
        self,
        endpoint: str,
        status: int = 500,
        *,
        mode: str = "status",
        times: int | None = 1,
        retry_after: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a fault for the next `times` calls to `endpoint` (None: until `clear`)."""
        if endpoint not in ENDPOINTS or mode not in MODES:
            raise ValueError(f"endpoint in {ENDPOINTS}, mode in {MODES}")
        self.faults[endpoint].append(Fault(mode, status, times, retry_after, delay))

    def hold(self, endpoint: str) -> asyncio.Event:
        """Calls to `endpoint` from now on wait until the returned event is set."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint in {ENDPOINTS}")
        gate = self.gates[endpoint] = asyncio.Event()
        return gate

    def clear(self, endpoint: str | None = None) -> None:
        for name in [endpoint] if endpoint else ENDPOINTS:
            self.faults[name].clear()

    def next_fault(self, endpoint: str) -> Fault | None:
        queue = self.faults[endpoint]
        if not queue:
            return None
        fault = queue[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                queue.popleft()
        return fault

    # -- tokens ------------------------------------------------------------------------------

    def now(self) -> float:
        return self._wall() + self.clock_skew

    def mint(self, claims: dict[str, Any], lifetime: float) -> str:
        now = self.now()
        self.issued += 1
        claims = {**claims}
        body = {
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "jti": secrets.token_urlsafe(12),
            **claims,
        }
        return self._issued(jwt.encode(body, self.signing_key, algorithm="HS256"))

    def mint_federated(self, subject: str, lifetime: float = 3600) -> str:
        """A projected service-account token, as the kubelet writes to the token file."""
        now = self.now()
        claims = {
            "iss": FEDERATED_ISSUER,
            "sub": subject,
            "aud": [FEDERATED_AUDIENCE],
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "jti": secrets.token_urlsafe(8),
        }
        return self._issued(jwt.encode(claims, self.federated_key, algorithm="HS256"))

    def issue_refresh_token(self, app: AppRegistration) -> str:
        token = f"0.A{secrets.token_urlsafe(48)}"  # opaque, like Azure AD's
        app.refresh_tokens.add(token)
        return self._issued(token)

    def _issued(self, value: str) -> str:
        if self.issued_values is not None:
            self.issued_values.add(value)
        return value

    def check_times(self, claims: dict[str, Any]) -> None:
        """exp and nbf on the sandbox's clock, with Azure's 5 minutes of allowed skew."""
        now = self.now()
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - 300:
            raise jwt.ExpiredSignatureError("expired")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + 300:
            raise jwt.ImmatureSignatureError("not yet valid")

    def verify(self, token: str, audience: str | None) -> dict[str, Any]:
        """Check a token this sandbox minted, like Partner Center checks an AAD token: the
        signature, then exp/nbf on the sandbox's own clock with Azure's 5 minutes of skew."""
        claims = jwt.decode(
            token,
            self.signing_key,
            algorithms=["HS256"],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": audience is not None,
            },
            audience=audience,
        )
        self.check_times(claims)
        return claims

    # -- call record -------------------------------------------------------------------------

    def record(self, call: Call) -> None:
        self.counts[call.endpoint] += 1
        self.calls.append(call)
        for waiter in [w for w in self._waiters if self.counts[w[0]] >= w[1]]:
            self._waiters.remove(waiter)
            if not waiter[2].done():
                waiter[2].set_result(None)

    async def wait_calls(self, endpoint: str, count: int, timeout: float = 10.0) -> None:
        """Wait (on a future, not a sleep) until `endpoint` has been called `count` times."""
        if self.counts[endpoint] >= count:
            return
        waiter = (endpoint, count, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[2], timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "faults": {e: len(q) for e, q in self.faults.items()},
            "lifetimes": self.lifetimes,
            "latency": self.latency,
            "issued": self.issued,
            "aad_max_in_flight": self.aad_max_in_flight,
            "customer_tenants": len({c.tenant_id for c in self.customers.values()}),
        }
