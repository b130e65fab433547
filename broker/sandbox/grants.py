"""How the fake Azure AD checks each grant, as the real one does."""

from __future__ import annotations

import hmac
from typing import Any

from .state import AppRegistration, SandboxState


class GrantRefused(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def _client_secret(app: AppRegistration, form: dict[str, Any]) -> None:
    secret = form.get("client_secret")
    if secret is None:
        raise GrantRefused(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: "
            "'client_assertion' or 'client_secret'.",
        )
    if app.client_secret is None or not hmac.compare_digest(
        str(secret).encode(), app.client_secret.encode()
    ):
        raise GrantRefused(
            401,
            "invalid_client",
            7000215,
            f"Invalid client secret provided. Ensure the secret being sent in the "
            f"request is the client secret value, not the client secret ID, for a "
            f"secret added to app '{app.client_id}'.",
        )


def authenticate(state: SandboxState, app: AppRegistration, form: dict[str, Any]) -> dict[str, Any]:
    """Check the grant; returns extra answer fields, raises GrantRefused like Azure AD."""
    grant = form["grant_type"]
    if grant == "client_credentials":
        _client_secret(app, form)
        return {}
    raise GrantRefused(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant}'.",
    )
