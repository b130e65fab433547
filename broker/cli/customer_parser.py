"""The command line's commands for customer tenants' operators (issue #26): `doctor` and
`consent`, and the roles `sandbox` can play for them (`--user`, `--refused-consent`)."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.options import add_command, config_arg, target_args


def customer_commands(sub: Any) -> None:
    """`doctor` and `consent`, added to the subcommands `sub`."""
    p = add_command(
        sub,
        "doctor",
        "what is wrong with a profile and its customer tenants, and the fix",
        "pc-token-broker doctor gdap --tenant contoso.onmicrosoft.com --online",
        "Reads the running daemon's state. For each profile (or PROFILE), and each of its\n"
        "customer tenants that is not healthy: what is wrong in words, the AADSTS code, trace\n"
        "and correlation ids and since when, what the broker is doing about it (cool-down,\n"
        "next attempt), and the fix (the admin-consent URL, MFA, GDAP, a new refresh token).\n"
        "Also warns when the refresh token nears Azure AD's 90-day inactivity limit. Exit 0\n"
        "healthy, 1 something needs fixing, 2 bad usage, 3 the daemon could not be reached.",
    )
    p.add_argument("profile", nargs="?", metavar="PROFILE", help="only this profile")
    p.add_argument(
        "--tenant",
        metavar="TENANT",
        help="only this customer tenant of PROFILE (default: every unhealthy one)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="check again now: a forced refresh of the profile's token and one token request "
        "per customer tenant checked (its remembered refusal dropped first) (default: off)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON (default: off)")
    target_args(p)

    p = add_command(
        sub,
        "consent",
        "obtain a profile's refresh token by signing in with a device code",
        "pc-token-broker consent gdap --config /etc/pc-token-broker/config.toml",
        "The device-code flow (as New-PartnerAccessToken -UseDeviceAuthentication): prints a\n"
        "code and a URL; a partner user opens it, signs in with MFA and consents; the command\n"
        "polls Azure AD (honouring slow_down and the code's expiry), checks that the sign-in\n"
        "had MFA (the token's amr claim), and writes the refresh token to the profile's\n"
        "refresh_token_file: mode 0600, atomically (a new file renamed over the old), never\n"
        "printed. The app registration must allow public client flows. Exit 0 written; 1 the\n"
        "flow failed, expired, was declined or had no MFA (nothing written); 2 bad usage.",
    )
    p.add_argument("profile", metavar="PROFILE", help='a profile with credential = "refresh_token"')
    p.add_argument(
        "--allow-no-mfa",
        action="store_true",
        help="write the token even if the sign-in had no MFA (Partner Center will refuse it; "
        "for customer tenants that do not require MFA) (default: off)",
    )
    config_arg(p)


def sandbox_roles(p: argparse.ArgumentParser) -> None:
    """`sandbox`'s roles for customer-tenant operators (issue #26): a user, a refused consent."""

    def tenant(text: str) -> tuple[str, str]:
        from broker.sandbox.roles import tenant_arg  # only when the option is given

        try:
            return tenant_arg(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument(
        "--user",
        choices=("mfa", "no-mfa"),
        help="a partner user for refresh_token profiles, signing in with MFA or without; the "
        "sandbox approves device codes at once (pc-token-broker consent) (default: none)",
    )
    p.add_argument(
        "--refused-consent",
        action="append",
        type=tenant,
        metavar="NAME[=GUID]",
        help="a customer tenant whose admin refused consent: every token asked there is "
        "refused with AADSTS65001; repeatable (default: none)",
    )
