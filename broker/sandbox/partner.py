"""A fake Partner Center `POST /generatetoken` and `POST /v3/generatetoken`.

As the REST reference describes: `Authorization: Bearer <AAD token>` (401 without a valid one;
`/v3` takes only tokens whose audience is https://api.partnercenter.microsoft.com), request
bodies in five media types carrying `grant_type=jwt_token` (400 otherwise), answers in the
media type the caller accepts, `expires_in` as a string, `ms-correlationid` and `ms-requestid`
made when absent and returned.
"""

from __future__ import annotations

import uuid
from typing import Any

import jwt
from aiohttp import web

from broker.core.upstream import pcformat
from broker.core.upstream.streams import read_limited
from broker.sandbox import faults
from broker.sandbox.state import PARTNER_AUDIENCE, Call, SandboxState

_GRAPH = "https://graph.windows.net"


def make_handler(state: SandboxState):
    async def generatetoken(request: web.Request) -> web.StreamResponse:
        correlation_id = request.headers.get("ms-correlationid") or str(uuid.uuid4())
        request_id = request.headers.get("ms-requestid") or str(uuid.uuid4())
        call = Call("partner", request.path, dict(request.headers), {})
        state.record(call)
        media = pcformat.response_type(request.headers.get("Accept"))

        def error(status: int, _fault: Any = None, description: str = "") -> web.Response:
            out = media or "application/json"
            text = description or {
                401: "The request was not authenticated.",
                429: "Too many requests.",
                500: "An unexpected error occurred.",
            }.get(status, "Error.")
            return web.Response(
                status=status,
                body=pcformat.render_error(out, status, text),
                content_type=out,
                charset="utf-8",
            )

        response = await faults.apply(state, "partner", request, error)
        if response is None:
            response = await _answer(state, request, media, error)
        call.status = response.status
        response.headers["ms-correlationid"] = correlation_id
        response.headers["ms-requestid"] = request_id
        return response

    return generatetoken


async def _answer(
    state: SandboxState, request: web.Request, media: str | None, error: Any
) -> web.Response:
    auth = request.headers.get("Authorization", "")
    scheme, _, bearer = auth.partition(" ")
    if scheme.lower() != "bearer" or not bearer.strip():
        return error(401, description="Authorization: Bearer <Azure AD token> is required.")
    v3 = request.path.startswith("/v3/")
    try:
        claims = state.verify(bearer.strip(), audience=None)
    except jwt.PyJWTError:
        return error(401, description="The Azure AD token is invalid or expired.")
    audience = claims.get("aud")
    allowed = {PARTNER_AUDIENCE} if v3 else {PARTNER_AUDIENCE, _GRAPH}
    if audience not in allowed:
        return error(401, description=f"Token audience {audience!r} is not accepted here.")
    amr = claims.get("amr")
    if isinstance(amr, list) and "mfa" not in amr:  # app+user without MFA: refused since 2026
        return error(
            401,
            description="900421: Multi-factor authentication is required for App+User calls: "
            "the Azure AD token shows no MFA (amr).",
        )
    if media is None:
        return error(
            406,
            description="Accept must allow application/json, text/json, "
            "application/xml or text/xml.",
        )
    body = await read_limited(request.content, pcformat.MAX_BODY)
    try:
        pcformat.grant_type(request.headers.get("Content-Type"), body)
    except pcformat.BadRequest as e:
        return error(e.status, description=e.description)
    lifetime = state.lifetimes["partner"]
    token = state.mint(
        {
            "aud": PARTNER_AUDIENCE,
            "tid": claims.get("tid"),
            "appid": claims.get("appid"),
            "iss": "https://api.partnercenter.microsoft.com",
        },
        lifetime,
    )
    return web.Response(
        body=pcformat.render_token(media, token, str(int(lifetime))),
        content_type=media,
        charset="utf-8",
    )
