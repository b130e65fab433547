"""The one table of AADSTS codes (broker/core/tenants/codes.py) against Microsoft Entra's
error-code reference (learn.microsoft.com/entra/identity-platform/reference-error-codes, read
2026-12): each code's name is Microsoft's, each fix is what Microsoft says fixes it, and the
codes an MSP's partner user meets (a disabled, locked or expired account; a delegated admin
blocked for risk) are there."""

from __future__ import annotations

from broker.core.tenants.codes import BY_CODE, CODES, Fix

# Microsoft's names, as its reference lists them (codes it lists without a name are left out).
REFERENCE = {
    65001: "DelegationDoesNotExist", 90094: "AdminConsentRequired",
    500011: "InvalidResourceServicePrincipalNotFound",
    700016: "UnauthorizedClient_DoesNotMatchRequest",
    7000112: "UnauthorizedClientApplicationDisabled",
    50076: "UserStrongAuthClientAuthNRequired",
    50074: "UserStrongAuthClientAuthNRequiredInterrupt",
    50079: "UserStrongAuthEnrollmentRequired", 50078: "UserStrongAuthExpired",
    70043: "BadTokenDueToSignInFrequency", 53003: "BlockedByConditionalAccess",
    700082: "ExpiredOrRevokedGrantInactiveToken", 50173: "FreshTokenNeeded",
    70008: "ExpiredOrRevokedGrant", 90002: "InvalidTenantName", 90072: "PassThroughUserMfaError",
    50020: "UserUnauthorized", 50105: "EntitlementGrantsNotFound", 50196: "LoopDetected",
    530034: "DelegatedAdminBlockedDueToSuspiciousActivity", 50057: "UserDisabled",
    50055: "InvalidPasswordExpiredPassword", 50053: "IdsLocked",
}  # fmt: skip


def test_names_are_microsofts():
    named = {c.code: c.name for c in CODES if c.code in REFERENCE}
    assert named == {code: REFERENCE[code] for code in named}
    assert len(named) >= len(CODES) - 5  # 650051, 90099, 700084, 900421: no name there


def test_each_fix_is_the_one_microsoft_gives():
    # 50105: "The signed in user isn't assigned to a role for the signed in app. Assign the
    # user to the app." Not a GDAP matter.
    assert BY_CODE[50105].fix is Fix.APP_ASSIGNMENT
    assert BY_CODE[530034].fix is Fix.USER_RISK
    for code in (50057, 50055, 50053):
        assert BY_CODE[code].fix is Fix.USER_ACCOUNT, code


def test_the_codes_a_partner_user_meets_are_there():
    for code in (530034, 50057, 50055, 50053, 700082, 50173, 50076, 65001, 90099):
        assert code in BY_CODE, code
