"""The one table of Azure AD (and Partner Center) refusal codes the broker knows: for each, the
class the broker files it under (how it behaves: cool-down and reach, see aadsts.py), what is
wrong in words, and the fix an operator applies. `doctor`, the docs' fix table
(`fix_table_markdown`) and the classification (`aadsts.AADSTS`) all read it from here.

Names and meanings follow Microsoft Entra's error-code reference
(https://learn.microsoft.com/entra/identity-platform/reference-error-codes); 900421 is Partner
Center's own (it refuses app+user calls whose Azure AD token shows no MFA). Pure data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote


class Fix(StrEnum):
    """What an operator does about a refusal. Each has a text (`FIX_TEXT`) with {profile},
    {tenant}, {consent_url} filled in for the profile and tenant at hand."""

    ADMIN_CONSENT = "admin_consent"
    MFA = "mfa"
    MFA_ENROL = "mfa_enrol"
    CONDITIONAL_ACCESS = "conditional_access"
    GDAP = "gdap"
    APP_DISABLED = "app_disabled"
    REFRESH_TOKEN = "refresh_token"
    TENANT = "tenant"
    WAIT = "wait"


FIX_TEXT: dict[Fix, str] = {
    Fix.ADMIN_CONSENT: "an admin of tenant {tenant} grants the app consent: {consent_url}",
    Fix.MFA: "sign in again with MFA for a new refresh token: pc-token-broker consent {profile}",
    Fix.MFA_ENROL: "the user enrols in MFA, then: pc-token-broker consent {profile}",
    Fix.CONDITIONAL_ACCESS: "tenant {tenant}'s conditional access refuses the sign-in: satisfy "
    "its policy (MFA, compliant device) and sign in again: pc-token-broker consent {profile}",
    Fix.GDAP: "check the GDAP relationship with tenant {tenant} (Partner Center > Customers > "
    "Admin relationships): active, and the user in a security group given the role needed",
    Fix.APP_DISABLED: "enable the app in tenant {tenant} (Enterprise applications), or an admin "
    "consents again: {consent_url}",
    Fix.REFRESH_TOKEN: "the refresh token is dead: get a new one with pc-token-broker consent "
    "{profile} (keep_alive_days keeps it from dying of inactivity)",
    Fix.TENANT: "check the tenant id or domain {tenant} (customer_tenants) and the profile's cloud",
    Fix.WAIT: "nothing: the broker waits out Azure AD's throttling and tries again",
}


@dataclass(frozen=True, slots=True)
class Code:
    """One refusal code: `state` is the broker's class (None: not a customer-tenant class, the
    entry's own error code stands), `words` what is wrong, `fix` what to do."""

    code: int
    name: str  # Microsoft's name for it
    state: str | None
    words: str
    fix: Fix


CODES: tuple[Code, ...] = (
    Code(65001, "DelegationDoesNotExist", "consent_required",
         "the app has no consent in this tenant", Fix.ADMIN_CONSENT),
    Code(650051, "(service principal present, not granted)", "consent_required",
         "the app is in the tenant but not granted the permissions it asks for",
         Fix.ADMIN_CONSENT),
    Code(90094, "AdminConsentRequired", "consent_required",
         "the permission needs an administrator's consent", Fix.ADMIN_CONSENT),
    Code(500011, "InvalidResourceServicePrincipalNotFound", "consent_required",
         "the resource asked for is not in the tenant (not consented)", Fix.ADMIN_CONSENT),
    Code(90099, "(app not authorized for partner delegated admins)", "consent_required",
         "the app is not authorized in this customer tenant for the partner's admins",
         Fix.ADMIN_CONSENT),
    Code(700016, "UnauthorizedClient_DoesNotMatchRequest", "consent_required",
         "the app is not in the tenant (never consented, or removed)", Fix.ADMIN_CONSENT),
    Code(7000112, "UnauthorizedClientApplicationDisabled", "consent_required",
         "the app is disabled in the tenant", Fix.APP_DISABLED),
    Code(50076, "UserStrongAuthClientAuthNRequired", "interaction_required",
         "the tenant requires MFA and the refresh token's sign-in had none", Fix.MFA),
    Code(50074, "UserStrongAuthClientAuthNRequiredInterrupt", "interaction_required",
         "strong authentication is required and the user did not pass MFA", Fix.MFA),
    Code(50079, "UserStrongAuthEnrollmentRequired", "interaction_required",
         "the user must enrol in MFA", Fix.MFA_ENROL),
    Code(50078, "UserStrongAuthExpired", "interaction_required",
         "the MFA of the refresh token's sign-in has expired", Fix.MFA),
    Code(70043, "BadTokenDueToSignInFrequency", "interaction_required",
         "conditional access's sign-in frequency expired the refresh token",
         Fix.CONDITIONAL_ACCESS),
    Code(53003, "BlockedByConditionalAccess", "interaction_required",
         "conditional access blocked the sign-in", Fix.CONDITIONAL_ACCESS),
    Code(900421, "Partner Center: MFA required", "interaction_required",
         "Partner Center refuses app+user calls whose token shows no MFA", Fix.MFA),
    Code(700082, "ExpiredOrRevokedGrantInactiveToken", "refresh_token_invalid",
         "the refresh token expired after 90 days without use", Fix.REFRESH_TOKEN),
    Code(50173, "FreshTokenNeeded", "refresh_token_invalid",
         "the refresh token was revoked (password changed or reset)", Fix.REFRESH_TOKEN),
    Code(70008, "ExpiredOrRevokedGrant", "refresh_token_invalid",
         "the refresh token expired or was revoked", Fix.REFRESH_TOKEN),
    Code(700084, "(single-page app refresh token expired)", "refresh_token_invalid",
         "a single-page app's refresh token reached its fixed lifetime", Fix.REFRESH_TOKEN),
    Code(90002, "InvalidTenantName", "tenant_not_found",
         "no such tenant (in this cloud)", Fix.TENANT),
    Code(90072, "PassThroughUserMfaError", "tenant_not_found",
         "the user is not in this tenant: no GDAP relationship reaches it", Fix.GDAP),
    Code(50020, "UserUnauthorized", "tenant_not_found",
         "the user's account may not sign in to this tenant (GDAP)", Fix.GDAP),
    Code(50105, "EntitlementGrantsNotFound", "tenant_not_found",
         "the user is not assigned a role for the app in this tenant (GDAP)", Fix.GDAP),
    Code(50196, "LoopDetected", "throttled",
         "Azure AD throttles the app (too many requests)", Fix.WAIT),
)  # fmt: skip
BY_CODE: dict[int, Code] = {c.code: c for c in CODES}
# Where the broker's error code is not an AADSTS code: throttled by status 429, and the
# upstream errors without a code of their own. The fix each class needs, by class.
CLASS_FIX: dict[str, Fix] = {
    "consent_required": Fix.ADMIN_CONSENT,
    "interaction_required": Fix.MFA,
    "refresh_token_invalid": Fix.REFRESH_TOKEN,
    "tenant_not_found": Fix.TENANT,
    "throttled": Fix.WAIT,
}


def consent_url(authority: str, tenant: str, client_id: str) -> str:
    """The admin-consent URL of the app `client_id` for `tenant`, in the profile's cloud."""
    return (
        f"{authority.rstrip('/')}/{quote(tenant, safe='')}/adminconsent"
        f"?client_id={quote(client_id, safe='')}"
    )


def fix_for(
    code: int | None,
    state: str | None,
    *,
    profile: str,
    tenant: str,
    authority: str,
    client_id: str,
) -> tuple[str, str] | None:
    """(what is wrong, what to do) for an AADSTS code, else for the broker's class; None when
    neither is known."""
    row = BY_CODE.get(code) if code is not None else None
    if row is not None:
        words, fix = row.words, row.fix
    elif state in CLASS_FIX:
        words, fix = state.replace("_", " "), CLASS_FIX[state]
    else:
        return None
    text = FIX_TEXT[fix].format(
        profile=profile, tenant=tenant, consent_url=consent_url(authority, tenant, client_id)
    )
    return words, text


def fix_table_markdown() -> str:
    """The table of every known code, for the docs (docs/operate/doctor.md is checked
    against it)."""
    lines = [
        "| AADSTS | Microsoft's name | class | what is wrong | the fix |",
        "|---|---|---|---|---|",
    ]
    for c in CODES:
        fix = FIX_TEXT[c.fix].format(
            profile="PROFILE", tenant="TENANT", consent_url="the admin-consent URL"
        )
        lines.append(f"| {c.code} | {c.name} | `{c.state}` | {c.words} | {fix} |")
    return "\n".join(lines) + "\n"
