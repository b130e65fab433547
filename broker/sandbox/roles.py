"""Roles `pc-token-broker sandbox` can play for customer-tenant operators, from the command
line: a partner user who signs in with MFA or without it (`--user mfa|no-mfa`: the sandbox
approves device codes at once, so `pc-token-broker consent user` gets that user's refresh
token), and customer tenants whose admin refused consent (`--refused-consent NAME[=GUID]`:
every token asked there is refused with AADSTS65001). `apply` registers them and returns the
TOML to print after the config: the `[profiles.user]` table, and the rest as comments.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from broker.sandbox.state import SandboxState

USER_CLIENT_ID = "00000000-0000-4000-8000-0000000be5e1"  # the partner user's app (--user)
CUSTOMER_SCOPES = ("https://graph.microsoft.com/.default", "https://management.azure.com/.default")

_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


@dataclass(frozen=True)
class Roles:
    user: str | None = None  # "mfa" | "no-mfa"
    refused_consent: tuple[tuple[str, str], ...] = ()  # (domain, tenant id)

    def __bool__(self) -> bool:
        return self.user is not None or bool(self.refused_consent)


def tenant_arg(spec: str) -> tuple[str, str]:
    """`NAME[=GUID]` (--customer-tenant, --refused-consent) -> (domain, tenant id): a bare NAME
    is NAME.onmicrosoft.com; without a GUID, one made from the domain (the same every run).
    Letters, digits, '-' and dots only: it goes into the printed TOML."""
    name, _, guid = spec.partition("=")
    name = name.lower()
    if len(name) > 200 or not _DOMAIN.fullmatch(name):
        raise ValueError(f"not a tenant name (letters, digits, '-' and dots): {spec[:80]!r}")
    domain = name if "." in name else f"{name}.onmicrosoft.com"
    tenant_id = str(uuid.UUID(guid)) if guid else str(uuid.uuid5(uuid.NAMESPACE_DNS, domain))
    return domain, tenant_id


def toml_list(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def apply(
    roles: Roles, state: SandboxState, tenant: str, secret: str, secret_file: str, folder: str
) -> str:
    """Register the roles (the user's own app, with `secret`); the TOML that tells the user how
    to use them, valid appended to the printed config."""
    lines: list[str] = []
    if roles.user is not None:
        mfa = roles.user == "mfa"
        state.register(tenant, USER_CLIENT_ID, client_secret=secret, mfa=mfa)
        state.device.auto, state.device.auto_mfa = "approved", mfa
        state.device.interval = 0  # already signed in: no reason to wait
        how = "WITH MFA" if mfa else "WITHOUT MFA (Partner Center refuses its tokens: 900421)"
        lines += [
            "",
            f"# a partner user who signs in {how}; the sandbox approves device codes at once.",
            "# Its refresh token (the profile's tokens fail until then): pc-token-broker consent"
            f" user --config THIS-FILE{'' if mfa else ' --allow-no-mfa'}",
            "[profiles.user]",
            f'tenant_id = "{tenant}"',
            f'client_id = "{USER_CLIENT_ID}"',
            'credential = "refresh_token"',
            f'refresh_token_file = "{folder}/user-refresh-token"',
            f'client_secret_file = "{secret_file}"',
            'customer_tenants = ["*"]',
            f"customer_scopes = [{toml_list(CUSTOMER_SCOPES)}]",
        ]
    for name, guid in roles.refused_consent:
        state.register_customer(guid, (name,), consents=set())
        lines.append(
            f"# customer tenant {name} ({guid}): its admin refused consent, every token is "
            "refused with AADSTS65001 (pc-token-broker doctor PROFILE names the fix)"
        )
    return "\n".join(lines)
