"""How the fake Azure AD checks each grant, as the real one does.

client_credentials authenticates the client with a secret or a client assertion. A client
assertion whose issuer is the client itself is a certificate assertion (checked against the
registered certificate by its `x5t#S256` thumbprint); any other issuer must match a federated
identity credential (issuer, subject, audience). refresh_token redeems and rotates a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.sandbox.state import FEDERATED_AUDIENCE, FEDERATED_ISSUER, AppRegistration, SandboxState

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class GrantRefused(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def _invalid_client(code: int, text: str) -> GrantRefused:
    return GrantRefused(401, "invalid_client", code, text)


def _client_secret(app: AppRegistration, secret: Any) -> None:
    if app.client_secret is None or not hmac.compare_digest(
        str(secret).encode(), app.client_secret.encode()
    ):
        raise _invalid_client(
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            f"the client secret value, not the client secret ID, for a secret added to app "
            f"'{app.client_id}'.",
        )


def _certificate_assertion(
    app: AppRegistration, assertion: str, header: dict, token_url: str, state: SandboxState
) -> None:
    if app.certificate_pem is None:
        raise _invalid_client(
            700027,
            "Client assertion failed signature validation. "
            "No certificate is registered for the app.",
        )
    cert = x509.load_pem_x509_certificate(app.certificate_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    if header.get("x5t#S256") != thumbprint:
        raise _invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        )
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):  # RS256 / PS256: only an RSA key verifies
        raise _invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        )
    try:
        claims = jwt.decode(
            assertion,
            public_key,
            algorithms=["RS256", "PS256"],
            audience=token_url,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        state.check_times(claims)
    except jwt.InvalidAudienceError:
        raise GrantRefused(
            400,
            "invalid_client",
            700212,
            f"No matching audience: the assertion must be for {token_url}.",
        ) from None
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise GrantRefused(
            400, "invalid_client", 700024, "Client assertion is not within its valid time range."
        ) from None
    except jwt.PyJWTError:
        raise _invalid_client(700027, "Client assertion failed signature validation.") from None
    if claims.get("sub") != app.client_id:
        raise _invalid_client(700023, "Client assertion subject must be the client id.")


def _federated_assertion(
    app: AppRegistration, assertion: str, claims: dict, state: SandboxState
) -> None:
    issuer, subject = claims.get("iss"), claims.get("sub")
    if issuer != FEDERATED_ISSUER or subject != app.federated_subject:
        raise GrantRefused(
            400,
            "invalid_request",
            70021,
            f"No matching federated identity record found for presented "
            f"assertion. Assertion Issuer: '{issuer}'. Assertion Subject: "
            f"'{subject}'.",
        )
    try:
        checked = jwt.decode(
            assertion,
            state.federated_key,
            algorithms=["HS256"],
            audience=FEDERATED_AUDIENCE,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        state.check_times(checked)
    except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
        raise GrantRefused(
            400, "invalid_client", 700024, "Client assertion is not within its valid time range."
        ) from None
    except jwt.PyJWTError:
        raise GrantRefused(
            400,
            "invalid_client",
            700213,
            "No matching federated identity record found for presented "
            "assertion audience or signature.",
        ) from None


def _client_authentication(
    app: AppRegistration,
    form: dict[str, Any],
    token_url: str,
    state: SandboxState,
    *,
    required: bool,
) -> None:
    if form.get("client_secret") is not None:
        _client_secret(app, form["client_secret"])
        return
    assertion = form.get("client_assertion")
    if assertion is None:
        if required:
            raise _invalid_client(
                7000218,
                "The request body must contain the following "
                "parameter: 'client_assertion' or 'client_secret'.",
            )
        return
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise GrantRefused(
            400, "invalid_request", 50027, "client_assertion_type must be the jwt-bearer type."
        )
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise GrantRefused(400, "invalid_client", 50027, "Invalid JWT token.") from None
    if claims.get("iss") == app.client_id:
        _certificate_assertion(app, assertion, header, token_url, state)
    else:
        _federated_assertion(app, assertion, claims, state)


def _refresh(app: AppRegistration, form: dict[str, Any], state: SandboxState) -> dict[str, Any]:
    presented = form.get("refresh_token")
    if not presented:
        raise GrantRefused(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'refresh_token'.",
        )
    if presented not in app.refresh_tokens:
        raise GrantRefused(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
    if state.revoke_rotated:
        app.refresh_tokens.discard(presented)
    return {"refresh_token": state.issue_refresh_token(app), "scope": str(form.get("scope", ""))}


def authenticate(
    state: SandboxState, app: AppRegistration, form: dict[str, Any], token_url: str
) -> dict[str, Any]:
    """Check the grant; returns extra answer fields, raises GrantRefused like Azure AD."""
    grant = form["grant_type"]
    if grant == "client_credentials":
        _client_authentication(app, form, token_url, state, required=True)
        return {}
    if grant == "refresh_token":
        # A confidential client (one with a secret) must authenticate; a public one need not.
        _client_authentication(app, form, token_url, state, required=app.client_secret is not None)
        return _refresh(app, form, state)
    raise GrantRefused(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant}'.",
    )
