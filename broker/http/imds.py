"""`GET /metadata/identity/oauth2/token`: the VM protocol (IMDS), for the clients that speak
only it (every Azure SDK when no App Service variable is set, azure-cli before 2.73). Off
unless `[msi] imds = true`; then an unknown path as before it existed is a 404.

Reached through `AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:8721` (azure-identity and
MSAL send their IMDS requests there), or on 169.254.169.254:80 inside a pod's network
namespace. IMDS has no secret header: what guards it is where it listens, and that it answers
only callers on this host or in this pod (`from_here`), `Metadata: true` (a browser or a server-side
request forgery cannot add it), the Host allowlist and the refusal of proxied requests; and,
as on /msi/token, callers who cannot present a uid or an access key get only the profiles
that are not restricted.

Answers in IMDS's shape, times as strings of digits; errors as `{"error",
"error_description"}`. Same cache, single flight and [msi] min_remaining as /msi/token.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from aiohttp import web

from broker.core.errors import UpstreamError
from broker.core.refusals import NotAllowed, Refused, ScopeNotAllowed, UnknownProfile
from broker.core.tokens import Token
from broker.http.access import refuse
from broker.http.callers import SdkCaller, identify
from broker.http.common import NO_STORE, REASON, error_response, retry_after
from broker.http.managed import Asked, not_served, read_query

ROUTE = "the IMDS endpoint"
# IMDS's api-versions from 2018-02-01 (the first that serves identity tokens) on, as Azure
# documents them; anything else is a 400 naming these.
API_VERSIONS = frozenset(
    (
        "2018-02-01", "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30",
        "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01", "2020-06-01",
        "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01", "2021-02-01",
        "2021-03-01", "2021-05-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
        "2023-07-01",
    )
)  # fmt: skip
SELECTORS = {
    "client_id": "client_id",
    "object_id": "object_id",
    "msi_res_id": "resource_id",
    "mi_res_id": "resource_id",
}
_HEADERS = {"Content-Type": "application/json; charset=utf-8", **NO_STORE}


def _fail(
    status: int,
    error: str,
    description: str,
    headers: dict[str, str] | None = None,
    reason: str = "imds",
) -> web.Response:
    body = {"error": error, "error_description": description}
    response = web.Response(
        status=status, body=json.dumps(body).encode(), headers={**_HEADERS, **(headers or {})}
    )
    response[REASON] = reason
    return response


def from_here(peer: Any, listener: Any) -> bool:
    """Whether a caller (`peer`, the transport's peername) is on this host, or in this pod.
    A unix socket: yes (whoever may open it). TCP: the listener (`sockname`) is a loopback
    address, or the caller's is, or the caller's address is the one it reached, which is what
    the kernel picks to reach an address of its own (169.254.169.254 on the pod's lo). Linux
    accepts a packet for any of its addresses on any interface: a neighbour on the pod's
    network that sends to 169.254.169.254 through the pod, or any host when the listener is
    0.0.0.0 with allow_remote, reaches the listener, from an address of its own."""
    if not isinstance(peer, tuple) or not isinstance(listener, tuple):
        return not isinstance(peer, tuple) and not isinstance(listener, tuple)  # unix socket
    try:
        caller, here = (_address(a[0]) for a in (peer, listener))
    except ValueError:  # a scoped IPv6 address (fe80::1%eth0): compared as written
        return bool(peer[0] == listener[0])
    return caller.is_loopback or here.is_loopback or caller == here


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, an IPv4 one as itself when a dual-stack listener shows it IPv4-mapped."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ImdsHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _refuse(self, reason: str, status: int, error: str, message: str) -> web.Response:
        return refuse(self.broker.metrics, reason, _fail(status, error, message, reason=reason))

    def _checked(self, request: web.Request) -> Asked | web.Response:
        runtime = self.broker.runtime
        msi = runtime.settings.msi
        if msi is None or not msi.imds:
            return error_response(404, "not_found", "no such endpoint")
        rejection = runtime.guard.origin(request.headers, request.raw_path)
        if rejection is not None:
            return self._refuse(
                rejection.reason, rejection.status, "invalid_request", rejection.message
            )
        transport = request.transport
        if transport is None or not from_here(
            transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        ):
            return self._refuse(
                "remote_caller",
                403,
                "invalid_request",
                "the IMDS endpoint answers only callers on this host (or in this pod)",
            )
        if request.headers.get("Metadata", "").lower() != "true":
            return self._refuse(
                "required_header", 400, "invalid_request", "Required metadata header not specified"
            )
        versions = request.query.getall("api-version", [])
        if len(versions) != 1 or versions[0] not in API_VERSIONS:
            return _fail(
                400,
                "invalid_request",
                "api-version must be one of IMDS's versions from 2018-02-01 on: "
                + ", ".join(sorted(API_VERSIONS)),
            )
        asked = read_query(runtime, request.query, SELECTORS, ROUTE)
        if isinstance(asked, str):
            return _fail(400, "invalid_request", asked)
        return asked

    async def token(self, request: web.Request) -> web.Response:
        asked = self._checked(request)
        if isinstance(asked, web.Response):
            return asked
        broker = self.broker
        msi = broker.runtime.settings.msi
        target = asked.own(msi.min_remaining)
        peer = identify(request)
        try:
            served = await broker.desk.serve(
                SdkCaller(peer, peer.description, route="imds"),
                asked.profile.name,
                target,
                refused=asked.refused,
            )
        except Refused as e:
            if isinstance(e, UnknownProfile | NotAllowed):  # removed or restricted: one answer
                return self._refuse("not_allowed", 400, "invalid_request", "Identity not found")
            if isinstance(e, ScopeNotAllowed):
                return _fail(400, "invalid_resource", not_served(asked.profile, asked.resource))
            headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
            return _fail(e.status, "invalid_request", e.message, headers)
        except UpstreamError as e:
            return _fail(e.status, "unknown_error", e.message, retry_after(e))
        left = int(served.token.expires_mono - broker.clock.monotonic())
        return _answer(served.token, asked.resource, served.profile.client_id, left)


def _answer(token: Token, resource: str, client_id: str, expires_in: int) -> web.Response:
    """IMDS's answer: every time a string of digits, `resource` echoed exactly."""
    body = {
        "access_token": token.value,
        "client_id": client_id,
        "expires_in": str(max(expires_in, 0)),
        "expires_on": str(token.expires_on),
        "ext_expires_in": str(max(expires_in, 0)),
        "not_before": str(int(token.received_wall)),
        "resource": resource,
        "token_type": "Bearer",
    }
    return web.Response(body=json.dumps(body).encode(), headers=_HEADERS)
