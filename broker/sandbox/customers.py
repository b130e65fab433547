"""Customer tenants in the fake Azure AD, as a CSP partner's app sees them through GDAP.

The partner's app (registered in the partner tenant) asks at `/{customer}/oauth2/v2.0/token`
with its refresh token (app + user, Secure Application Model) or app credentials. A refresh
token is not tied to a tenant or resource: the same one buys tokens for every customer and
resource the consent covers, and every answer rotates it.

Refusals carry Azure AD's error bodies: `error`, `error_description` starting with
"AADSTSnnnnn:", `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`, and
`suberror` / `claims` where Azure AD sends them.
"""

from __future__ import annotations

import json
from typing import Any

from broker.sandbox.state import AppRegistration, CustomerTenant

# code -> (status, error, description). Descriptions follow Azure AD's wording; {client},
# {tenant}, {resource} are filled in.
CATALOGUE: dict[int, tuple[int, str, str]] = {
    65001: (
        400,
        "invalid_grant",
        "The user or administrator has not consented to use the application with ID "
        "'{client}' named 'Partner tools'. Send an interactive authorization request for this "
        "user and resource.",
    ),
    650051: (
        400,
        "invalid_client",
        "Service principal name is already present for the tenant, but the application "
        "'{client}' has not been granted the permissions it requested for '{resource}'.",
    ),
    50076: (
        400,
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access '{resource}'.",
    ),
    50079: (
        400,
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must enroll in multi-factor authentication to access '{resource}'.",
    ),
    50078: (
        400,
        "invalid_grant",
        "Presented multi-factor authentication has expired due to policies configured by your "
        "administrator, you must refresh your multi-factor authentication to access "
        "'{resource}'.",
    ),
    70043: (
        400,
        "invalid_grant",
        "The refresh token has expired or is invalid due to sign-in frequency checks by "
        "conditional access. The token was issued on 2026-01-01T00:00:00Z and the maximum "
        "allowed lifetime for this request is 86400.",
    ),
    700082: (
        400,
        "invalid_grant",
        "The refresh token has expired due to inactivity. The token was issued on "
        "2026-01-01T00:00:00Z and was inactive for 90.00:00:00.",
    ),
    50173: (
        400,
        "invalid_grant",
        "The provided grant has expired due to it being revoked, a fresh auth token is "
        "needed. The user might have changed or reset their password. The grant was issued "
        "on '2026-01-01T00:00:00Z' and the TokensValidFrom date (before which tokens are not "
        "valid) for this user is '2026-02-01T00:00:00Z'.",
    ),
    70008: (
        400,
        "invalid_grant",
        "The provided authorization code or refresh token has expired due to inactivity. "
        "Send a new interactive authorization request for this user and resource.",
    ),
    700084: (
        400,
        "invalid_grant",
        "The refresh token was issued to a single page app (SPA), and therefore has a fixed, "
        "limited lifetime of 1.00:00:00, which can't be extended. It is now expired and a new "
        "sign in request must be sent by the SPA to the sign in page. The token was issued on "
        "2026-01-01T00:00:00Z.",
    ),
    90002: (
        400,
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, this "
        "may happen if there are no active subscriptions for the tenant.",
    ),
    90072: (
        400,
        "invalid_grant",
        "User account 'admin@partner.example' from identity provider "
        "'https://sts.windows.net/partner/' does not exist in tenant '{tenant}' and cannot "
        "access the application '{client}'(Partner tools) in that tenant. The account needs "
        "to be added as an external user in the tenant first. Sign out and sign in again with "
        "a different Azure Active Directory user account.",
    ),
    700016: (
        400,
        "unauthorized_client",
        "Application with identifier '{client}' was not found in the directory '{tenant}'. "
        "This can happen if the application has not been installed by the administrator of "
        "the tenant or consented to by any user in the tenant. You may have sent your "
        "authentication request to the wrong tenant.",
    ),
    # Beyond the codes the sandbox's own knobs produce: for `refusal=` (every code of the
    # broker's table, broker/core/tenants/codes.py, can be played).
    90099: (
        400,
        "invalid_grant",
        "The application '{client}' (Partner tools) has not been authorized in the tenant "
        "'{tenant}'. Applications must be authorized to access the customer tenant before "
        "partner delegated administrators can use them.",
    ),
    90094: (
        400,
        "invalid_grant",
        "The grant requires admin permission.",
    ),
    500011: (
        400,
        "invalid_resource",
        "The resource principal named {resource} was not found in the tenant named {tenant}. "
        "This can happen if the application has not been installed by the administrator of "
        "the tenant or consented to by any user in the tenant.",
    ),
    7000112: (
        400,
        "unauthorized_client",
        "Application '{client}'(Partner tools) is disabled.",
    ),
    50074: (
        400,
        "invalid_grant",
        "Strong Authentication is required.",
    ),
    53003: (
        400,
        "invalid_grant",
        "Access has been blocked by Conditional Access policies. The access policy does not "
        "allow token issuance.",
    ),
    50020: (
        400,
        "invalid_grant",
        "User account 'admin@partner.example' from identity provider "
        "'https://sts.windows.net/partner/' does not exist in tenant '{tenant}' and cannot "
        "access the application '{client}'(Partner tools) in that tenant.",
    ),
    50105: (
        400,
        "invalid_grant",
        "Your administrator has configured the application Partner tools ('{client}') to block "
        "users unless they are specifically granted ('assigned') access to the application.",
    ),
}
SUBERRORS = {65001: "consent_required", 50076: "basic_action", 50079: "basic_action"}


class Refusal(Exception):
    """An AADSTS refusal from the catalogue; `extra` are more answer fields (suberror...)."""

    def __init__(self, code: int, *, client: str, tenant: str, resource: str) -> None:
        status, error, text = CATALOGUE[code]
        super().__init__(text)
        self.code, self.status, self.error = code, status, error
        self.description = text.format(client=client, tenant=tenant, resource=resource)
        self.extra: dict[str, Any] = {}
        if code in SUBERRORS:
            self.extra["suberror"] = SUBERRORS[code]
        if code == 50076:
            self.extra["claims"] = json.dumps(
                {"access_token": {"capolids": {"essential": True, "values": ["mfa-policy"]}}}
            )


def check(
    customer: CustomerTenant, app: AppRegistration, grant: str, resource: str, client: str
) -> None:
    """What Azure AD checks in a customer tenant after the grant itself is valid."""

    def refuse(code: int) -> Refusal:
        return Refusal(code, client=client, tenant=customer.tenant_id, resource=resource)

    if customer.refusal is not None:
        raise refuse(customer.refusal)
    delegated = grant == "refresh_token"
    if delegated and not customer.relationship:
        raise refuse(90072)
    if not customer.consents and not delegated:
        raise refuse(700016)  # the app's service principal is not in the tenant
    if not customer.consented(resource):
        raise refuse(65001)
    if delegated and customer.require_mfa and not app.mfa:
        raise refuse(50076)
