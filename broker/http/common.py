"""What every endpoint family shares: the broker's JSON error shape, standard headers, and the
wrapper that counts requests and turns any crash into a JSON 500 without a traceback."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy, istr

from broker.core.errors import UpstreamError
from broker.core.tokens.render import JSON, TEXT, json_body
from broker.core.tokens.schedule import MAX_RETRY_AFTER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def path_param(request: web.Request, name: str, default: str = "") -> str:
    """A `{name}` of the route's path, as aiohttp's router matched it."""
    return request.match_info.get(name, default)


def single(query: Any, name: str) -> str | bool | None:
    """The one value of query parameter `name`, None when absent, False when given more than
    once."""
    values = query.getall(name, [])
    if len(values) > 1:
        return False
    return values[0] if values else None


MAX_BODY = 64 * 1024  # bytes: no broker endpoint needs more
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
CONTENT_TYPES = {
    JSON: "application/json",
    "application/xml": "application/xml; charset=utf-8",
    "text/xml": "text/xml; charset=utf-8",
    TEXT: "text/plain; charset=utf-8",
}


def frozen_headers(headers: dict[str, str]) -> CIMultiDictProxy[str]:
    """Headers for every answer of a kind, built once: aiohttp copies a case-insensitive
    mapping with `istr` names as it is, where it would fold each name of a dict again."""
    return CIMultiDictProxy(CIMultiDict((istr(name), value) for name, value in headers.items()))


HEADERS = {
    media: frozen_headers({"Content-Type": ct, **NO_STORE}) for media, ct in CONTENT_TYPES.items()
}
# Key in a response's own mapping: why it was refused, for the debug log.
REASON = web.ResponseKey("reason", str)


class BodyTimeout(TimeoutError):
    """A request body did not arrive within read_timeout of its head's first byte: raised
    by `broker.http.bodies.read_body`. The answer is 408."""


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    upstream_status: int | None = None,
    correlation_id: str | None = None,
    headers: dict[str, str] | None = None,
    aadsts: int | None = None,
    trace_id: str | None = None,
) -> web.Response:
    """The one error shape: {"error": {code, message, upstream_status?, correlation_id?,
    aadsts?, trace_id?}}."""
    error: dict[str, Any] = {"code": code, "message": message}
    if upstream_status is not None:
        error["upstream_status"] = upstream_status
    if correlation_id is not None:
        error["correlation_id"] = correlation_id
    if aadsts is not None:
        error["aadsts"] = aadsts
    if trace_id is not None:
        error["trace_id"] = trace_id
    response = web.Response(
        status=status,
        body=json_body({"error": error}),
        headers={**HEADERS[JSON], **(headers or {})},
    )
    response[REASON] = code
    return response


def retry_after(e: UpstreamError) -> dict[str, str] | None:
    seconds = e.retry_after
    if not seconds or not 0 < seconds <= MAX_RETRY_AFTER:  # also NaN: never a 500 from here
        return None
    return {"Retry-After": str(math.ceil(seconds))}


def upstream_error_response(e: UpstreamError) -> web.Response:
    return error_response(
        e.status,
        e.code,
        e.message,
        upstream_status=e.upstream_status,
        correlation_id=e.correlation_id,
        headers=retry_after(e),
        aadsts=e.aadsts,
        trace_id=e.trace_id,
    )


def counted(
    route: str,
    handler: Handler,
    *,
    metrics: Any,
    log: Any,
    limit_body: bool = True,
    method: str = "*",
) -> Handler:
    """Count by route and status; refuse bodies over MAX_BODY and expectations other than
    100-continue; a crash becomes a JSON 500. `method`: the one `handler` answers, if one."""
    counts = metrics.requests_of(route)  # answers of this route, by status
    posts = method in ("POST", "*")  # a GET route never sees a POST's expectation

    async def wrapper(request: web.Request) -> web.StreamResponse:
        has_body = request.body_exists  # a GET has none: no length to parse, nothing unread
        try:
            if has_body and limit_body and (request.content_length or 0) > MAX_BODY:
                metrics.rejected.labels("body_too_large").inc()
                response: web.StreamResponse = error_response(
                    413, "body_too_large", f"request bodies are limited to {MAX_BODY} bytes"
                )
                response.force_close()  # no keep-alive after a body we refused to read
            elif posts and _unmet_expectation(request):
                response = error_response(
                    417, "expectation_failed", "only 100-continue is supported"
                )
            else:
                response = await handler(request)
        except web.HTTPException as e:
            response = error_response(e.status, "http_error", e.reason)
        except BodyTimeout as e:
            response = error_response(408, "request_timeout", str(e))
        except ConnectionError:  # the client went away mid-body: nobody to answer, no crash
            log.info("client_disconnected", route=route)
            response = error_response(400, "client_disconnected", "the client disconnected")
        except Exception:
            log.exception("handler_crashed", route=route)
            response = error_response(500, "internal_error", "internal error (logged)")
        if has_body and request.can_read_body:
            # A body was left unread (refused, or not needed): whatever follows on this
            # connection cannot be told from it, so the connection ends with this answer.
            response.force_close()
        status = response.status
        counts[status] += 1
        if 400 <= status < 500:  # refusals: visible when asked for, never by default
            log.debug(
                "request_refused",
                route=route,
                method=request.method,
                path=request.path[:200],
                status=status,
                reason=response.get(REASON, ""),
            )
        return response

    return wrapper


def _unmet_expectation(request: web.Request) -> bool:
    """An HTTP/1.1 POST expecting something other than 100-continue (aiohttp's own expect
    handler would answer it with text that quotes the header)."""
    expect = request.headers.get(hdrs.EXPECT) if request.method == "POST" else None
    return (
        expect is not None and request.version == HttpVersion11 and expect.lower() != "100-continue"
    )
