"""Who may pass: the origin guard every family applies, a caller's right to a profile, and the
refusal in the broker's error shape (counted by reason).

`requester` is the caller `broker.core.serve` checks after every wait (a
`broker.http.callers.Requester`): the peer the kernel recorded (or the address), the access key
it presented, the route it asked through. Managed-identity callers (`SdkCaller`) cannot present
a uid or a key, so they get only unrestricted profiles.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core.guards import Rejection
from broker.core.refusals import Refused
from broker.core.runtime import Runtime
from broker.http.callers import ACCESS_KEY_HEADER, Requester, identify, restricted
from broker.http.common import error_response


def requester(request: web.BaseRequest) -> Requester:
    peer = identify(request)
    key = request.headers.get(ACCESS_KEY_HEADER)
    return peer.requester if key is None else Requester(peer, key, peer.description)


def refuse(metrics: Any, reason: str, response: web.Response) -> web.Response:
    """Count a refusal by reason, and pass its answer on."""
    metrics.rejected.labels(reason).inc()
    return response


def rejected(metrics: Any, rejection: Rejection) -> web.Response:
    """An origin-guard rejection in the broker's error shape, counted."""
    return refuse(
        metrics,
        rejection.reason,
        error_response(rejection.status, rejection.code, rejection.message),
    )


def guard(runtime: Runtime, metrics: Any, request: web.BaseRequest) -> web.Response | None:
    """What every /v1 request passes: origin checks and the required header."""
    rejection = runtime.guard.v1(request.headers, request.raw_path)
    return None if rejection is None else rejected(metrics, rejection)


def operator_guard(runtime: Runtime, metrics: Any, request: web.BaseRequest) -> web.Response | None:
    """/readyz and /metrics: no required header (scrapers and probes cannot send one), but no
    proxied request and no foreign Host either (a DNS-rebound page could read them)."""
    rejection = runtime.guard.origin(request.headers, request.raw_path)
    return None if rejection is None else rejected(metrics, rejection)


def refusal(metrics: Any, e: Refused) -> web.Response:
    """A core refusal in the broker's error shape (counted when it has a reason)."""
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    response = error_response(e.status, e.code, e.message, headers=headers)
    return response if e.reason is None else refuse(metrics, e.reason, response)


def hidden(runtime: Runtime, request: web.BaseRequest) -> frozenset[str]:
    """The restricted profiles this caller may not use: never named to it."""
    profiles = runtime.settings.profiles
    names = [name for name, p in profiles.items() if restricted(p)]
    if not names:
        return frozenset()
    caller = requester(request)
    return frozenset(n for n in names if not caller.may_use(profiles[n]))
