"""`pc-token-broker doctor`: what is wrong with a profile and its customer tenants, and the fix.

Pure: builds findings from what the daemon answered (`/v1/profiles`, `/v1/tenants/{profile}`)
and renders them as text or JSON. The fixes come from the one table of refusal codes
(`broker.core.tenants.codes`); the broker's own error codes without an AADSTS code have theirs
here. Never a token or secret: the daemon's answers carry none.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from broker.core.tenants.codes import fix_for

# Partner Center's MFA refusal: a 401 whose description names it (no AADSTS prefix).
_PARTNER_MFA = re.compile(r"\b900421\b")
# Warn when this few days are left before the refresh token's 90-day limit (as the alert).
DAYS_LEFT_WARNING = 14
# Tenants in these states need nothing.
HEALTHY = frozenset({"ok", "idle"})
# The fix for the broker's own error codes, when no AADSTS code says more.
OWN_FIXES: dict[str, tuple[str, str]] = {
    "upstream_unreachable": (
        "the broker cannot reach {endpoint}",
        "check DNS, the firewall and the proxy ([server] upstream_proxy, HTTPS_PROXY) to "
        "{authority}",
    ),
    "upstream_timeout": (
        "{endpoint} did not answer in time",
        "check the network path; raise upstream_timeout if the upstream is merely slow",
    ),
    "upstream_failing": (
        "{endpoint} answers with errors (5xx or 429)",
        "nothing, usually: the broker retries with backoff; if it lasts, check the service's "
        "health page with the correlation id",
    ),
    "upstream_bad_token": (
        "{endpoint} answered 200 without a usable token",
        "check that the URL points at the real service, not a proxy's or portal's page",
    ),
    "credential_unavailable": (
        "the credential's file is missing or unreadable",
        "check the file named in the profile (its path, owner and mode)",
    ),
    "upstream_refused": (
        "{endpoint} refused the credential",
        "check tenant_id, client_id and the secret or certificate of the app registration",
    ),
}


@dataclass
class Finding:
    """One thing that needs fixing."""

    profile: str
    subject: str  # "profile aad", "profile partner", "tenant T", "refresh token", "MFA"
    state: str
    what: str
    fix: str
    doing: str = ""
    aadsts: int | None = None
    trace_id: str | None = None
    correlation_id: str | None = None
    since: float | None = None
    tenant: str | None = None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _since(value: Any) -> float | None:
    """Unix seconds from 1970 to the year 5000; anything else is not a time."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 9.5e10:
        return float(value)
    return None


def _aadsts(error: dict[str, Any]) -> int | None:
    code = error.get("aadsts")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    message = error.get("message")
    unauthorized = error.get("upstream_status") == 401 and isinstance(message, str)
    if unauthorized and _PARTNER_MFA.search(str(message)):
        return 900421
    return None


def _words(
    error: dict[str, Any], state: str, row: dict[str, Any], tenant: str
) -> tuple[str, str, int | None]:
    """(what is wrong, the fix, the AADSTS code) for an error of the daemon's answer."""
    code = _aadsts(error)
    known = fix_for(
        code,
        state,
        profile=row["_name"],
        tenant=tenant,
        authority=str(row.get("authority") or "https://login.microsoftonline.com"),
        client_id=str(row.get("client_id") or "CLIENT_ID"),
    )
    if known is not None:
        return known[0], known[1], code
    own = OWN_FIXES.get(str(error.get("code") or state))
    endpoint = {"aad": "Azure AD", "partner": "Partner Center"}.get(
        str(error.get("endpoint")), "the upstream"
    )
    if own is not None:
        what, fix = own
        return (
            what.format(endpoint=endpoint),
            fix.format(authority=row.get("authority") or "Azure AD"),
            code,
        )
    return str(error.get("message") or state), "see the message and the log", code


def _error_finding(
    name: str, row: dict[str, Any], subject: str, state: str, error: dict[str, Any], tenant: str
) -> Finding:
    what, fix, code = _words(error, state, row, tenant)
    return Finding(
        profile=name,
        subject=subject,
        state=state,
        what=what,
        fix=fix,
        aadsts=code,
        trace_id=error.get("trace_id"),
        correlation_id=error.get("correlation_id"),
        since=_since(error.get("since")),
    )


def profile_findings(name: str, row: dict[str, Any]) -> list[Finding]:
    """What is wrong with a profile itself (its own tokens, MFA, its refresh token, a block on
    every customer tenant), from its /v1/profiles row."""
    row = {**row, "_name": name}
    own_tenant = str(row.get("tenant_id") or "organizations")
    found: list[Finding] = []
    for kind in ("aad", "partner"):
        entry = row.get(kind)
        if not isinstance(entry, dict) or entry.get("state") not in ("failing", "stale"):
            continue
        error = _dict(entry.get("last_error"))
        f = _error_finding(name, row, f"{kind} token", str(entry["state"]), error, own_tenant)
        serving = "serving the cached token while it lasts; " if entry["state"] == "stale" else ""
        f.doing = f"{serving}{_attempt(entry.get('next_attempt_in'), entry.get('failures_in_row'))}"
        found.append(f)
    if row.get("mfa") is False and not any(f.aadsts == 900421 for f in found):
        what, fix, _ = _words({"aadsts": 900421}, "interaction_required", row, own_tenant)
        found.append(Finding(name, "MFA", "interaction_required", what, fix, aadsts=900421))
    aging = _aging(name, row.get("refresh_token"))
    if aging is not None:
        found.append(aging)
    customers = row.get("customer_tenants")
    block = customers.get("profile_block") if isinstance(customers, dict) else None
    if isinstance(block, dict):
        error = _dict(block.get("last_error"))
        f = _error_finding(
            name, row, "every customer tenant", str(block.get("state")), error, own_tenant
        )
        f.doing = f"no customer tenant asks Azure AD for {_seconds(block.get('retry_in'))}"
        found.append(f)
    return found


def _aging(name: str, life: Any) -> Finding | None:
    """A refresh token near Azure AD's 90-day inactivity limit."""
    days_left = life.get("days_left") if isinstance(life, dict) else None
    if not isinstance(life, dict) or not isinstance(days_left, int | float):
        return None
    if days_left >= DAYS_LEFT_WARNING:
        return None
    age_days = life.get("age_s", 0) // 86400
    return Finding(
        name,
        "refresh token",
        "refresh_token_aging",
        f"the refresh token was last redeemed {age_days:.0f} days ago: {days_left:g} days "
        "before Azure AD's 90-day inactivity limit",
        f"pc-token-broker consent {name} (and find why the keep-alive did not redeem it: the "
        "broker stopped, or its redemptions fail)",
        doing=f"redeeming it every {life.get('keep_alive_days')} days while running",
    )


def tenant_findings(name: str, row: dict[str, Any], tenants: list[dict[str, Any]]) -> list[Finding]:
    """A finding for each customer tenant of the listing that is not healthy."""
    row = {**row, "_name": name}
    found = []
    for t in tenants:
        state = str(t.get("state"))
        if state in HEALTHY:
            continue
        tenant = str(t.get("tenant"))
        error = _dict(t.get("last_error"))
        f = _error_finding(name, row, f"tenant {tenant}", state, error, tenant)
        f.tenant = tenant
        f.doing = _attempt(t.get("next_attempt_in"), t.get("failures_in_row"))
        found.append(f)
    return found


def _attempt(next_in: Any, failures: Any) -> str:
    tries = f"{failures} failure(s) in a row; " if isinstance(failures, int) and failures else ""
    if not isinstance(next_in, int | float):
        return f"{tries}the next caller tries again"
    return f"{tries}next attempt in {_seconds(next_in)}"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.0f} s"


def _stamp(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def render_text(checked: dict[str, list[Finding]]) -> str:
    lines = []
    for name, findings in checked.items():
        if not findings:
            lines.append(f"{name}: healthy")
            continue
        lines.append(f"{name}: {len(findings)} problem(s)")
        for f in findings:
            head = f"  {f.subject}: {f.state}"
            if f.aadsts is not None:
                head += f" (AADSTS{f.aadsts})" if f.aadsts != 900421 else " (Partner Center 900421)"
            if f.since is not None:
                head += f" since {_stamp(f.since)}"
            lines.append(head)
            lines.append(f"    wrong: {f.what}")
            ids = [f"trace id {f.trace_id}" if f.trace_id else "",
                   f"correlation id {f.correlation_id}" if f.correlation_id else ""]  # fmt: skip
            if any(ids):
                lines.append(f"    ids:   {', '.join(i for i in ids if i)}")
            if f.doing:
                lines.append(f"    doing: {f.doing}")
            lines.append(f"    fix:   {f.fix}")
    return "\n".join(lines)


def render_json(checked: dict[str, list[Finding]]) -> dict[str, Any]:
    return {
        "healthy": not any(checked.values()),
        "profiles": {
            name: {"healthy": not findings, "findings": [asdict(f) for f in findings]}
            for name, findings in checked.items()
        },
    }
