"""The broker's routes, on aiohttp's router.

Each path has its method's handler and, for any other method, a 405 (an OPTIONS preflight: 403);
every other path is a 404; all in the JSON error shape, each counted by route name and status
(`counted`). GET routes answer no HEAD. `Expect: 100-continue` on a POST is answered with the
interim 100 as aiohttp's own expect handler answers it; any other expectation is a JSON 417.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from broker.http.common import Handler, counted
from broker.http.imds import ImdsHandler
from broker.http.mirror import MirrorHandler
from broker.http.msi import MsiHandler
from broker.http.ops import OpsHandlers
from broker.http.tenants import TenantHandlers
from broker.http.v1 import V1Handlers

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def expect_continue(request: web.Request) -> None:
    """The expect handler of every route: an HTTP/1.1 POST that waits for `100 Continue`
    before sending its body gets it (any other expectation is answered 417 by `counted`)."""
    if (
        request.method == "POST"
        and request.version == HttpVersion11
        and request.headers["Expect"].lower() == "100-continue"
    ):
        await request.writer.write(CONTINUE)


def add_routes(app: web.Application, broker: Any) -> None:
    v1 = V1Handlers(broker)
    ops = OpsHandlers(broker)
    tenants = TenantHandlers(broker)
    mirror = MirrorHandler(broker)
    msi = MsiHandler(broker)
    imds = ImdsHandler(broker)
    kw = {"metrics": broker.metrics, "log": broker.log}
    router = app.router

    def add(path: str, name: str, method: str, handler: Handler, limit_body: bool = True) -> None:
        router.add_route(
            method,
            path,
            counted(name, handler, limit_body=limit_body, method=method, **kw),
            expect_handler=expect_continue,
        )
        router.add_route(
            "*", path, counted(name, ops.method_not_allowed, **kw), expect_handler=expect_continue
        )

    add("/v1/token", "token", "GET", v1.token)
    # Each profile configured at start gets a path of its own: aiohttp finds a plain path with
    # one dict lookup, where /v1/token/{profile} first tries /v1/token and then a pattern (a
    # twentieth of a cache hit). The pattern serves the profiles a reload adds.
    for profile in broker.settings.profiles:
        add(f"/v1/token/{profile}", "token", "GET", partial(v1.token, profile=profile))
    add("/v1/token/{profile}", "token", "GET", v1.token)
    add("/v1/token/{profile}/refresh", "refresh", "POST", v1.refresh)
    add("/v1/profiles", "profiles", "GET", v1.profiles)
    add("/v1/tenants/{profile}", "tenants", "GET", tenants.listing)
    add("/v1/tenants/{profile}/{tenant}/invalidate", "invalidate", "POST", tenants.invalidate)
    add("/healthz", "healthz", "GET", ops.healthz)
    add("/readyz", "readyz", "GET", ops.readyz)
    add("/metrics", "metrics", "GET", ops.metrics)
    add("/msi/token", "msi", "GET", msi.token)
    add("/msi/tenants/{tenant}/token", "msi", "GET", msi.tenant_token)
    add("/metadata/identity/oauth2/token", "imds", "GET", imds.token)
    # msal-node (7.2) asks AZURE_POD_IDENTITY_AUTHORITY_HOST's IMDS with a trailing slash.
    add("/metadata/identity/oauth2/token/", "imds", "GET", imds.token)
    # The mirror answers an oversized body itself, in Partner Center's error shape.
    add("/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
    add("/v3/generatetoken", "mirror", "POST", mirror.handle, limit_body=False)
    router.add_route(
        "*", "/{tail:.*}", counted("other", ops.not_found, **kw), expect_handler=expect_continue
    )
