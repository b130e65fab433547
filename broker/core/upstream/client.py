"""The Azure AD and Partner Center client: requests, bounded reads, error mapping. No caching.

Both ride on one shared aiohttp ClientSession (passed in). Redirects are never followed: a
bearer or a client secret must not travel to wherever a 302 points.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from broker.core.errors import (
    TokenFormatError,
    UpstreamError,
    UpstreamFailing,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from broker.core.tokens import Token, token_from_response
from broker.core.tokens.clock import Clock
from broker.core.tokens.token import MAX_LIFETIME
from broker.core.upstream.details import parse_details
from broker.core.upstream.proxies import Proxies
from broker.core.upstream.streams import load_json, read_limited
from broker.core.upstream.wire import MAX_BODY, Answer, RefreshIds, retry_after_seconds
from broker.observe.redact import Redactor

_RETRYABLE_4XX = frozenset({408, 425, 429})


class Upstream:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        metrics: Any,
        redactor: Redactor,
        proxies: Proxies | None = None,
    ) -> None:
        self._session = session
        self._clock = clock
        self._metrics = metrics
        self._redactor = redactor
        self.proxies = proxies or Proxies(env={})

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def redactor(self) -> Redactor:
        return self._redactor

    async def post(
        self,
        endpoint: str,
        url: str,
        *,
        data: Any,
        headers: dict[str, str],
        timeout: float,
        correlation_id: str | None = None,
    ) -> Answer:
        """One POST with a total timeout and a bounded body; transport failures mapped."""
        started = time.perf_counter()
        outcome = "ok"
        proxy, proxy_headers = self.proxies.for_url(url)
        if proxy_headers and url.startswith("http:"):
            # aiohttp sends proxy_headers on a CONNECT (https) only; a plain-http request goes
            # to the proxy itself and carries them.
            headers = {**headers, **proxy_headers}
        try:
            async with self._session.post(
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=proxy_headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await read_limited(resp.content, MAX_BODY)
                if len(body) > MAX_BODY:
                    outcome = "bad_token"
                    raise TokenFormatError(
                        f"answer larger than {MAX_BODY} bytes",
                        endpoint=endpoint,
                        upstream_status=resp.status,
                        correlation_id=correlation_id,
                    )
                return Answer(resp.status, resp.content_type, dict(resp.headers), body)
        except TimeoutError:
            outcome = "timeout"
            raise UpstreamTimeout(
                f"no answer within {timeout:g} s", endpoint=endpoint, correlation_id=correlation_id
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            outcome = "unreachable"
            raise UpstreamUnreachable(
                f"connection failed ({type(e).__name__})",
                endpoint=endpoint,
                correlation_id=correlation_id,
            ) from None
        finally:
            self._metrics.upstream_latency.labels(endpoint).observe(time.perf_counter() - started)
            if outcome != "ok":
                self._metrics.upstream.labels(endpoint, outcome).inc()

    def count(self, endpoint: str, outcome: str) -> None:
        self._metrics.upstream.labels(endpoint, outcome).inc()

    def credential_refused(self, profile: str, credential: str) -> None:
        """Azure AD refused a profile's credential (an expired secret, a revoked refresh
        token): counted apart, because waiting will not fix it (an alert rule watches it)."""
        self._metrics.credential_refused.labels(profile, credential).inc()

    def received(self, body: Any, max_lifetime: float = MAX_LIFETIME) -> Token:
        """A token answer's body as a Token, anchored on this clock at receipt, its value given
        to the redactor (opaque tokens too, not only JWT-shaped ones). TokenRejected when the
        body is no usable token (no value, no usable expiry, expired, a lifetime over
        `max_lifetime`)."""
        token = token_from_response(
            body,
            now_mono=self._clock.monotonic(),
            now_wall=self._clock.time(),
            max_lifetime=max_lifetime,
        )
        self._redactor.add(token.value)
        return token

    def token_answer(
        self,
        endpoint: str,
        answer: Answer,
        correlation_id: str | None,
        parse: Callable[[Answer], Any] | None = None,
        max_lifetime: float = MAX_LIFETIME,
    ) -> tuple[Token, Any]:
        """THE place an upstream 200 becomes a Token: its body read (JSON, or by `parse`: the
        mirror reads Partner Center's XML too), the token taken from it (`received`), the
        outcome counted. Returns (Token, the whole answer); a body that is no usable token is a
        TokenFormatError carrying the reason (never the token)."""
        try:
            body = (parse or _json_answer)(answer)
            token = self.received(body, max_lifetime)
        except ValueError as e:  # TokenRejected, and a body that is not JSON (or XML)
            self.count(endpoint, "bad_token")
            raise TokenFormatError(
                str(e), endpoint=endpoint, upstream_status=200, correlation_id=correlation_id
            ) from None
        self.count(endpoint, "ok")
        return token, body

    def error(self, endpoint: str, answer: Answer, correlation_id: str | None) -> UpstreamError:
        """A non-200 answer → the error the cache and the callers see."""
        status = answer.status
        details = parse_details(answer.body, answer.headers, self._redactor.text)
        detail = details.description
        message = f"{_NAMES[endpoint]} answered {status}" + (f": {detail}" if detail else "")
        retry_after = retry_after_seconds(answer.headers.get("Retry-After"), self._clock.time())
        retry = status >= 500 or status in _RETRYABLE_4XX
        self.count(endpoint, "failing" if retry else "refused")
        return (UpstreamFailing if retry else UpstreamRefused)(
            message,
            endpoint=endpoint,
            upstream_status=status,
            retry_after=retry_after,
            # Upstream's own id when it names one (what its support looks up), else ours.
            correlation_id=details.correlation_id or correlation_id,
            aadsts=details.aadsts,
            trace_id=details.trace_id,
        )

    async def azure_ad_answer(
        self, url: str, form: dict[str, str], *, timeout: float, ids: RefreshIds
    ) -> Answer:
        """POST {authority}/{tenant}/oauth2/v2.0/token; the answer as it came (any status)."""
        headers = {
            "Accept": "application/json",
            "client-request-id": ids.correlation_id,
            "return-client-request-id": "true",
        }
        return await self.post(
            "aad",
            url,
            data=form,
            headers=headers,
            timeout=timeout,
            correlation_id=ids.correlation_id,
        )

    async def azure_ad_token(
        self,
        url: str,
        form: dict[str, str],
        *,
        timeout: float,
        ids: RefreshIds,
        refused: Callable[[Answer], UpstreamError] | None = None,
        max_lifetime: float = MAX_LIFETIME,
    ) -> tuple[Token, dict[str, Any]]:
        """POST {authority}/{tenant}/oauth2/v2.0/token. Returns the token and the whole answer
        (a refresh-token credential needs the rotated refresh token from it). A non-200 answer
        raises `refused(answer)` when given (customer tenants classify Azure AD's refusals),
        else `error()`'s. `max_lifetime`: longer for a CAE token (see `token_answer`)."""
        answer = await self.azure_ad_answer(url, form, timeout=timeout, ids=ids)
        if answer.status != 200:
            raise refused(answer) if refused else self.error("aad", answer, ids.correlation_id)
        return self.token_answer("aad", answer, ids.correlation_id, max_lifetime=max_lifetime)

    async def generate_token(
        self, url: str, aad_token: str, *, timeout: float, ids: RefreshIds
    ) -> Token:
        """POST generatetoken_url with the AAD token as bearer, grant_type=jwt_token."""
        headers = {
            "Authorization": f"Bearer {aad_token}",
            "Accept": "application/json",
            "ms-correlationid": ids.correlation_id,
            "ms-requestid": ids.request_id,
        }
        answer = await self.post(
            "partner",
            url,
            data={"grant_type": "jwt_token"},
            headers=headers,
            timeout=timeout,
            correlation_id=ids.correlation_id,
        )
        if answer.status != 200:
            raise self.error("partner", answer, ids.correlation_id)
        return self.token_answer("partner", answer, ids.correlation_id)[0]


def _json_answer(answer: Answer) -> Any:
    """A token answer's JSON body; ValueError (with the content type) when it is not JSON."""
    try:
        return load_json(answer.body)
    except ValueError:  # UnicodeDecodeError too
        kind = answer.content_type or "no content type"
        raise ValueError(f"200 but not a JSON token ({kind})") from None


_NAMES = {"aad": "Azure AD", "partner": "Partner Center", "mirror": "Partner Center"}
