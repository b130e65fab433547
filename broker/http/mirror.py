"""`POST /generatetoken` and `POST /v3/generatetoken`: the upstream contract, cached.

Everything the broker can judge itself (no bearer, a body too large, the wrong media type, a
malformed body, a grant_type other than jwt_token, no acceptable answer type) is answered the
way Partner Center would, in its error shape, without an upstream call. Upstream errors are
relayed as they came (status, body, media type); only a failure to reach upstream at all is
the broker's own 502/504, in the caller's media type.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from broker.core.cache.mirror import Relay
from broker.core.errors import UpstreamError, UpstreamTimeout
from broker.core.upstream import pcformat
from broker.http import access
from broker.http.bodies import read_body
from broker.http.callers import identify
from broker.http.common import REASON, BodyTimeout
from broker.observe.audit import safe_id


class MirrorHandler:
    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def handle(self, request: web.Request) -> web.Response:
        headers = request.headers
        caller = identify(request)  # before the first await (see `identify`)
        media = pcformat.response_type(headers.get("Accept"))
        ids = {
            "ms-correlationid": headers.get("ms-correlationid") or str(uuid.uuid4()),
            "ms-requestid": headers.get("ms-requestid") or str(uuid.uuid4()),
        }
        metrics = self.broker.metrics

        def refuse(status: int, description: str, *, result: str = "rejected") -> web.Response:
            metrics.mirror.labels(result).inc()
            out = media or "application/json"
            response = web.Response(
                status=status,
                body=pcformat.render_error(out, status, description),
                headers={"Content-Type": pcformat.content_type(out), **ids},
            )
            response[REASON] = description  # the broker's own words, for the debug log
            return response

        runtime = self.broker.runtime
        rejection = runtime.guard.origin(headers, request.raw_path)
        if rejection is not None:  # in Partner Center's shape, counted as every refusal
            return access.refuse(
                metrics, rejection.reason, refuse(rejection.status, rejection.message)
            )
        mirror = runtime.mirror
        if mirror is None:
            return refuse(404, "the /generatetoken mirror is switched off ([mirror] enabled)")
        scheme, _, bearer = headers.get("Authorization", "").partition(" ")
        bearer = bearer.strip()
        if scheme.lower() != "bearer" or not bearer:
            return refuse(401, "Authorization: Bearer <Azure AD token> is required.")
        if media is None:
            return refuse(
                406, "Accept must allow application/json, text/json, application/xml or text/xml."
            )
        if (request.content_length or 0) > pcformat.MAX_BODY:
            return refuse(413, f"request body larger than {pcformat.MAX_BODY} bytes")
        try:
            body = await read_body(request, pcformat.MAX_BODY)
        except BodyTimeout as e:
            return refuse(408, str(e))
        try:
            pcformat.grant_type(headers.get("Content-Type"), body)
        except pcformat.BadRequest as e:
            return refuse(e.status, e.description)
        forward = {
            "headers": {
                "Authorization": f"Bearer {bearer}",
                "Accept": headers.get("Accept", "application/json"),
                "Content-Type": headers["Content-Type"],
                **ids,
            },
            "body": body,
        }
        try:
            cached, hit = await mirror.get(bearer, request.path, forward)
        except Relay as relay:
            metrics.mirror.labels("relayed").inc()
            answer = relay.answer
            relayed = {
                "Content-Type": answer.headers.get("Content-Type", "application/json"),
                **ids,
            }
            if "Retry-After" in answer.headers:
                relayed["Retry-After"] = answer.headers["Retry-After"]
            response = web.Response(status=answer.status, body=answer.body, headers=relayed)
            response[REASON] = "relayed from upstream"
            return response
        except UpstreamTimeout as e:
            return refuse(504, f"Partner Center did not answer: {e.message}", result="error")
        except UpstreamError as e:
            return refuse(502, f"Partner Center could not be used: {e.message}", result="error")
        metrics.mirror.labels("hit" if hit else "miss").inc()
        self.broker.audit.served(
            "mirror",
            "",  # no profile: the caller brought its own Azure AD token
            "partner",
            caller.description,
            hit,
            safe_id(cached.correlation_id),
        )
        left = int(cached.token.remaining(self.broker.clock.monotonic()))
        return web.Response(
            body=pcformat.render_token(media, cached.token.value, str(left), cached.token_type),
            headers={
                "Content-Type": pcformat.content_type(media),
                "Cache-Control": "no-store",
                **ids,
            },
        )
