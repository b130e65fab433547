"""`check-config --online`'s MFA check: whether each refresh-token profile's Azure AD token
shows MFA (Partner Center refuses app+user calls without it, 900421). Only the running daemon
can tell without harm: check-config redeeming the refresh token itself would rotate it outside
the daemon (whose copy would then be spent). So the daemon is asked (`/v1/profiles`, at the
config's first listener); when none answers, the line says why it cannot tell."""

from __future__ import annotations

import json
from typing import Any

from broker.config.settings import Settings


def mfa_lines(settings: Settings, path: str) -> list[str]:
    """One line per refresh-token profile (none when there is none)."""
    from broker.cli.client import DaemonUnreachable, TargetError, request, target_from

    names = sorted(n for n, p in settings.profiles.items() if p.credential == "refresh_token")
    if not names:
        return []
    try:
        target = target_from(None, None, path, explicit=True, env={})
        status, body = request(target, "GET", "/v1/profiles", timeout=5)
        profiles = json.loads(body).get("profiles") if status == 200 else None
    except (TargetError, DaemonUnreachable, ValueError, AttributeError, RecursionError) as e:
        why = str(e) if isinstance(e, TargetError | DaemonUnreachable) else "not the broker"
        return [
            f"  MFA:             cannot tell ({why}): only the running daemon can, without "
            "redeeming (and rotating) the refresh token itself; start it and run again"
        ]
    if not isinstance(profiles, dict):
        return [f"  MFA:             cannot tell: the daemon at {target} answered HTTP {status}"]
    return [f"  MFA:             {name}: {_word(name, profiles.get(name))}" for name in names]


def _word(name: str, row: Any) -> str:
    if not isinstance(row, dict):
        return "not served by the running daemon (reload it?)"
    mfa = row.get("mfa")
    if mfa is True:
        return "yes (the token's amr shows MFA)"
    if mfa is False:
        return (
            "NO: the token's amr shows no MFA; Partner Center refuses app+user calls without "
            f"it (900421): pc-token-broker consent {name}"
        )
    return "unknown yet (the daemon has not redeemed the refresh token since it started)"
