"""A fake Azure AD v2.0 token endpoint: `POST /{tenant}/oauth2/v2.0/token`.

Statuses and error bodies follow Azure AD: 400 `invalid_request` / `unauthorized_client` /
`invalid_scope` / `invalid_grant` / `unsupported_grant_type`, 401 `invalid_client`, each with
`error`, `error_description` (AADSTS code first), `error_codes`, `timestamp`, `trace_id`,
`correlation_id`.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import jwt
from aiohttp import web

from broker.sandbox import devicecode, faults
from broker.sandbox.customers import CATALOGUE, Refusal, check
from broker.sandbox.grants import GrantRefused, authenticate
from broker.sandbox.state import Call, SandboxState

SAFE_FIELDS = ("grant_type", "client_id", "scope", "client_assertion_type", "claims")


def aad_error(
    status: int,
    error: str,
    code: int,
    description: str,
    correlation_id: str,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {now}",
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        **(extra or {}),
    }
    return web.json_response(body, status=status)


def make_handler(state: SandboxState):
    async def token(request: web.Request) -> web.StreamResponse:
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        form: dict[str, Any] = {}
        call = Call("aad", request.path, dict(request.headers), {})
        state.record(call)
        state.aad_in_flight += 1
        state.aad_max_in_flight = max(state.aad_max_in_flight, state.aad_in_flight)
        try:
            return await answer(request, call, correlation_id, form)
        finally:
            state.aad_in_flight -= 1

    async def answer(
        request: web.Request, call: Call, correlation_id: str, form: dict[str, Any]
    ) -> web.StreamResponse:

        def fault_error(status: int, _fault: Any) -> web.Response:
            if status == 429:
                return aad_error(
                    429,
                    "temporarily_unavailable",
                    50196,
                    "The server is busy. Retry later.",
                    correlation_id,
                )
            if status >= 500:
                return aad_error(
                    status,
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                    correlation_id,
                )
            return aad_error(
                status, "invalid_client", 7000215, "Invalid client secret provided.", correlation_id
            )

        response = await faults.apply(state, "aad", request, fault_error)
        if response is None:
            if request.content_type == "application/x-www-form-urlencoded":
                form = dict(await request.post())
            call.form = {k: str(v) for k, v in form.items() if k in SAFE_FIELDS}
            if form.get("client_assertion"):  # which assertion was used, not the assertion
                call.form["assertion_jti"] = _jti(str(form["client_assertion"]))
            token_url = f"{request.scheme}://{request.host}{request.path}"
            tenant = request.match_info["tenant"]
            response = _answer(state, tenant, form, correlation_id, token_url)
        call.status = response.status
        response.headers["client-request-id"] = correlation_id
        return response

    return token


def _client_capabilities(raw: Any) -> set[str] | None:
    """The client capabilities a `claims` request parameter announces
    (`{"access_token": {"xms_cc": {"values": [...]}}}`), lower-cased; None when `claims` is
    not a JSON object."""
    if raw is None or raw == "":
        return set()
    try:
        claims = json.loads(str(raw))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    access = claims.get("access_token")
    xms_cc = access.get("xms_cc") if isinstance(access, dict) else None
    values = xms_cc.get("values") if isinstance(xms_cc, dict) else None
    if not isinstance(values, list):
        return set()
    return {v.lower() for v in values if isinstance(v, str)}


def _jti(assertion: str) -> str:
    try:
        return str(jwt.decode(assertion, options={"verify_signature": False}).get("jti"))
    except jwt.PyJWTError:
        return ""


def _answer(
    state: SandboxState, tenant: str, form: dict[str, Any], correlation_id: str, token_url: str
) -> web.Response:
    def refuse(status: int, error: str, code: int, text: str) -> web.Response:
        return aad_error(status, error, code, text, correlation_id)

    for required in ("grant_type", "client_id"):
        if not form.get(required):
            return refuse(
                400,
                "invalid_request",
                900144,
                f"The request body must contain the following parameter: '{required}'.",
            )
    customer = state.customers.get(tenant.lower())
    if customer is None and not any(app.tenant_id == tenant for app in state.apps.values()):
        return refuse(
            400, "invalid_request", 90002, CATALOGUE[90002][2].format(tenant=tenant[:100])
        )
    app = state.apps.get(form["client_id"])
    if app is None or (customer is None and app.tenant_id != tenant):
        return refuse(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{form['client_id']}' was not found in "
            f"the directory '{tenant}'.",
        )
    scope = str(form.get("scope", ""))
    resource = scope.split()[0].removesuffix("/.default") if scope else ""
    if form["grant_type"] == "client_credentials" and not scope.endswith("/.default"):
        return refuse(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential "
            f"flows must have a scope value with /.default suffixed to the resource "
            f"identifier (application ID URI).",
        )
    if form["grant_type"] == devicecode.GRANT and customer is None:
        return _device_code(state, app, tenant, form, correlation_id)
    try:
        extra = authenticate(state, app, form, token_url)
        if form["grant_type"] == "refresh_token" and app.refresh_token_refusal is not None:
            raise Refusal(
                app.refresh_token_refusal, client=app.client_id, tenant=tenant, resource=resource
            )
        if customer is not None:
            check(customer, app, form["grant_type"], resource, app.client_id)
            tenant = customer.tenant_id
            state.customer_calls[(tenant, resource)] += 1
    except GrantRefused as e:
        return refuse(e.status, e.error, e.code, e.description)
    except Refusal as e:
        return aad_error(e.status, e.error, e.code, e.description, correlation_id, e.extra)
    capabilities = _client_capabilities(form.get("claims"))
    if capabilities is None:
        return refuse(
            400,
            "invalid_request",
            9002313,
            "Invalid request. Request is malformed or invalid. (claims is not a JSON object)",
        )
    # A client that announced cp1 gets a CAE token: Azure AD makes these live longer (20 to
    # 28 h) and writes the capability into the token.
    cae = "cp1" in capabilities
    lifetime = state.lifetimes["aad_cae" if cae else "aad"]
    claims: dict[str, Any] = {
        "aud": resource,
        "iss": f"https://sts.windows.net/{tenant}/",
        "tid": tenant,
        "appid": app.client_id,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_OID, app.client_id)),
        "ver": "1.0",
    }
    if cae:
        claims["xms_cc"] = ["cp1"]
    if form["grant_type"] == "refresh_token":  # app + user: how the user signed in
        claims["amr"] = ["pwd", "mfa"] if app.mfa else ["pwd"]
        claims["scp"] = "user_impersonation"
    body = {
        "token_type": "Bearer",
        "expires_in": int(lifetime),
        "ext_expires_in": int(lifetime),
        "access_token": state.mint(claims, lifetime),
        **extra,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store, no-cache"})


def _device_code(
    state: SandboxState, app: Any, tenant: str, form: dict[str, Any], correlation_id: str
) -> web.Response:
    """The device_code grant: pending, slow_down, expired, declined, or (approved) the tokens
    of the user who signed in, with a refresh token, `amr` saying whether with MFA."""
    polled = state.device.poll(str(form.get("device_code", "")), app.client_id, state.now())
    if isinstance(polled, str):
        code, text = devicecode.ERRORS[polled]
        return aad_error(400, polled, code, text, correlation_id)
    app.mfa = polled.mfa  # the user behind this app's refresh tokens signed in so
    lifetime = state.lifetimes["aad"]
    resource = polled.scope.split()[0].removesuffix("/.default") if polled.scope else ""
    user = {
        "tid": tenant,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_OID, "device-user:" + app.client_id)),
        "amr": ["pwd", "mfa"] if polled.mfa else ["pwd"],
    }
    body = {
        "token_type": "Bearer",
        "scope": polled.scope,
        "expires_in": int(lifetime),
        "ext_expires_in": int(lifetime),
        "access_token": state.mint(
            {**user, "aud": resource, "appid": app.client_id, "scp": "user_impersonation"},
            lifetime,
        ),
        "id_token": state.mint({**user, "aud": app.client_id}, lifetime),
    }
    if "offline_access" in polled.scope.split():
        body["refresh_token"] = state.issue_refresh_token(app)
    return web.json_response(body, headers={"Cache-Control": "no-store, no-cache"})


def make_devicecode_handler(state: SandboxState):
    """`POST /{tenant}/oauth2/v2.0/devicecode`: form `client_id`, `scope`."""

    async def handler(request: web.Request) -> web.Response:
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        form: dict[str, Any] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(await request.post())
        call = Call("aad", request.path, dict(request.headers), {})
        call.form = {k: str(v) for k, v in form.items() if k in SAFE_FIELDS}
        state.record(call)
        tenant = request.match_info["tenant"]
        client_id = str(form.get("client_id", ""))
        app = state.apps.get(client_id)
        if not client_id or not form.get("scope"):
            missing = "client_id" if not client_id else "scope"
            response = aad_error(
                400,
                "invalid_request",
                900144,
                f"The request body must contain the following parameter: '{missing}'.",
                correlation_id,
            )
        elif app is None or app.tenant_id != tenant:
            response = aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id[:100]}' was not found in the "
                f"directory '{tenant[:100]}'.",
                correlation_id,
            )
        else:
            flow = state.device.start(client_id, tenant, str(form["scope"]), state.now())
            response = web.json_response(state.device.answer(flow, str(request.url.origin())))
        call.status = response.status
        return response

    return handler
