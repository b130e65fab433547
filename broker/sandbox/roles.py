"""Roles `pc-token-broker sandbox` can play for customer-tenant operators, from the command line:
a partner user who signs in with MFA or without it (`--user mfa|no-mfa`: the sandbox approves
device codes at once, so `pc-token-broker consent` gets that user's refresh token), and customer
tenants whose admin refused consent (`--refused-consent NAME[=GUID]`: every token asked there
is refused with AADSTS65001). `apply` registers them and returns the text to print.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from broker.sandbox.state import SandboxState


@dataclass(frozen=True)
class Roles:
    user: str | None = None  # "mfa" | "no-mfa"
    refused_consent: tuple[tuple[str, str], ...] = ()  # (domain, tenant id)

    def __bool__(self) -> bool:
        return self.user is not None or bool(self.refused_consent)


def tenant_arg(text: str) -> tuple[str, str]:
    """NAME[=GUID]: a domain and the tenant id (a stable one made from NAME when not given)."""
    name, _, guid = text.partition("=")
    name = name.strip().lower()
    if not name or "/" in name or len(name) > 253:
        raise ValueError(f"not a tenant domain: {text[:80]!r}")
    guid = str(uuid.UUID(guid)) if guid else str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
    return name, guid


def apply(roles: Roles, state: SandboxState, url: str, tenant: str, client_id: str) -> str:
    """Register the roles; the lines that tell the user how to use them."""
    lines: list[str] = []
    if roles.user is not None:
        mfa = roles.user == "mfa"
        state.apps[client_id].mfa = mfa
        state.device.auto, state.device.auto_mfa = "approved", mfa
        state.device.interval = 0  # already signed in: no reason to wait
        how = "WITH MFA" if mfa else "WITHOUT MFA (Partner Center refuses its tokens: 900421)"
        lines += [
            f"a partner user who signs in {how}; device codes are approved at once:",
            "  [profiles.user]",
            f'  tenant_id = "{tenant}"',
            f'  client_id = "{client_id}"',
            '  credential = "refresh_token"',
            '  refresh_token_file = "sandbox-user.refresh-token"  # beside the config',
            '  client_secret_env = "SANDBOX_SECRET"',
            '  customer_tenants = ["*"]',
            '  customer_scopes = ["https://graph.microsoft.com/.default"]',
            "  its refresh token: pc-token-broker consent user --config CONFIG"
            + ("" if mfa else " --allow-no-mfa"),
        ]
    for name, guid in roles.refused_consent:
        state.register_customer(guid, (name,), consents=set())
        lines.append(
            f"customer tenant {name} ({guid}): its admin refused consent, every token is "
            "refused with AADSTS65001 (pc-token-broker doctor user names the fix)"
        )
    return "\n".join(lines)
