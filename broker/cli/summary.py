"""Human-readable text: the `check-config` summary and the `status` table. Never a secret:
only where a secret comes from ("file /x", "env NAME"), never its value."""

from __future__ import annotations

import time
from typing import Any

from broker.cli.client import support_ids
from broker.config.settings import Settings


def describe(settings: Settings, path: str, *, pending: str | None = None) -> str:
    """The summary `check-config` prints. Its first line says OK, unless checks are still
    `pending` (then it says which: `--online` says OK only once they have passed)."""
    s = settings.server
    offline = " (offline: no secret files, environment or host lookups)"
    verdict = f"valid; {pending} to come" if pending else "OK"
    lines = [
        f"{path}: {verdict}{offline if settings.offline else ''}",
        f"  listen:          {', '.join(str(x) for x in s.listen)}",
        f"  required header: {s.required_header[0]}: {s.required_header[1]}",
        f"  allowed hosts:   {', '.join(sorted(s.allowed_hosts))}",
        f"  profiles:        {len(settings.profiles) or 'none'}",
    ]
    for p in settings.profiles.values():
        source = f" ({p.secret_source})" if p.secret_source else ""
        lines += [
            f"    {p.name}: credential {p.credential}{source}, tenant {p.tenant_id}, "
            f"client {p.client_id}{', warm' if p.warm else ''}",
            f"      authority {p.authority}; scope {p.scope}; generatetoken {p.generatetoken_url}",
            f"      refresh at max({p.min_refresh_margin:g} s, {p.refresh_ahead:g} x lifetime) "
            f"before expiry; serve while >= {p.min_remaining:g} s left; "
            f"upstream timeout {p.upstream_timeout:g} s",
        ]
        if p.serves_customers:
            lines.append(
                f"      customer tenants {', '.join(p.customer_tenants)}; "
                f"scopes {', '.join(p.customer_scopes)}"
            )
    m = settings.mirror
    lines.append(
        f"  mirror:          {'on' if m.enabled else 'off'}, upstream {m.upstream_base}, "
        f"at most {m.max_entries} tokens"
    )
    if settings.shared is not None:
        sh = settings.shared
        lines.append(
            f"  shared cache:    {sh.redis_url}, prefix {sh.prefix}, key file {sh.key_file}"
            f"{', password file ' + str(sh.password_file) if sh.password_file else ''}, "
            f"lease {sh.lock_timeout:g} s"
        )
    msi = settings.msi
    if msi is None:
        lines.append("  msi:             off (no [msi] table)")
    else:
        header = (
            f"header written to {msi.generated_header_file}"
            if msi.generated_header_file
            else f"header from {msi.header_source or 'the config'}"
        )
        lines.append(
            f"  msi:             on, profile {msi.profile}, {header}, "
            f"serve while >= {msi.min_remaining:g} s left"
        )
        lines.append(
            "  imds:            on, /metadata/identity/oauth2/token (no secret header: whoever "
            "can connect to a listener gets the unrestricted profiles' tokens)"
            if msi.imds
            else "  imds:            off ([msi] imds = false)"
        )
    for warning in settings.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def when(expires_on: Any, expires_in: Any) -> str:
    """ "in 59m (2026-11-24T18:03:12Z)": seconds left and the UTC instant."""
    if not isinstance(expires_on, int | float) or isinstance(expires_on, bool):
        return "at an unknown time"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_on))
    return f"in {_seconds(expires_in)} ({stamp})"


def restart_line(pending: Any) -> str:
    """The settings a reload read but only a restart applies (empty when none)."""
    if not isinstance(pending, list) or not pending:
        return ""
    names = ", ".join(str(x) for x in pending)
    return f"warning: restart pending for {names}: the process still runs the old values"


def troubles(profiles: dict[str, Any]) -> list[str]:
    """One phrase per profile and kind whose last refresh failed: `status` exits 1 on any."""
    found = []
    for name, info in sorted(profiles.items()):
        for kind in ("partner", "aad"):
            e = info.get(kind) if isinstance(info, dict) else None
            if not isinstance(e, dict) or e.get("state") not in ("failing", "stale"):
                continue
            error = e.get("last_error") or {}
            detail = [str(error.get("code", "error"))]
            if error.get("upstream_status"):
                detail.append(f"upstream status {error['upstream_status']}")
            detail += support_ids(error)
            found.append(f"{name} {kind} {e['state']} ({', '.join(detail)})")
    return found


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 120:
        return f"{value / 60:.0f}m"
    return f"{value:.0f}s"


def status_table(profiles: dict[str, Any]) -> str:
    header = ("PROFILE", "KIND", "STATE", "EXPIRES IN", "NEXT", "FAILS", "LAST ERROR", "CALLS")
    rows = [header]
    for name, info in sorted(profiles.items()):
        for kind in ("partner", "aad"):
            e = info.get(kind)
            if not e:
                continue
            error = e.get("last_error") or {}
            last = "-"
            if error:
                last = error.get("code", "")
                if error.get("upstream_status"):
                    last += f" ({error['upstream_status']})"
            calls = ",".join(f"{k}={v}" for k, v in sorted(e.get("upstream_calls", {}).items()))
            rows.append(
                (
                    name,
                    kind,
                    e["state"],
                    _seconds(e.get("expires_in")),
                    _seconds(e.get("next_attempt_in")),
                    str(e.get("failures_in_row", 0)),
                    last,
                    calls or "-",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def shared_line(shared: dict[str, Any]) -> str:
    """The `status` line for the fleet's shared cache (from /v1/profiles)."""
    line = (
        f"shared cache: {shared.get('state')} ({shared.get('redis')}); "
        f"hits {shared.get('hits', 0)}, misses {shared.get('misses', 0)}, "
        f"lease waits {shared.get('lease_waits', 0)}, Redis errors {shared.get('errors', 0)}"
    )
    if shared.get("last_error"):
        line += f"; last error: {shared['last_error']}"
    return line


def customer_lines(profiles: dict[str, Any]) -> list[str]:
    """`status` lines under the table: a profile whose own Azure AD token shows no MFA (Partner
    Center refuses app+user calls without it, 401 with error 900421), and each profile's
    customer tenants by state."""
    lines = []
    for name, info in sorted(profiles.items()):
        if not isinstance(info, dict):
            continue
        if info.get("mfa") is False:
            lines.append(
                f"warning: {name}: its Azure AD token shows no MFA (amr): Partner Center "
                "refuses app+user calls without it (401, error 900421); sign in again with MFA"
            )
        lines += refresh_token_lines(name, info.get("refresh_token"))
        customers = info.get("customer_tenants")
        if isinstance(customers, dict):
            states = customers.get("tenants") or {}
            counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none seen"
            line = f"{name}: customer tenants: {counts}; {customers.get('tokens', 0)} tokens"
            block = customers.get("profile_block")
            if isinstance(block, dict):
                line += f"; every tenant {block.get('state')} for {_seconds(block.get('retry_in'))}"
            lines.append(line)
    return lines


# Warn when this few days are left before Azure AD's 90-day inactivity limit (as the alert).
DAYS_LEFT_WARNING = 14


def refresh_token_lines(name: str, life: Any) -> list[str]:
    """A refresh_token profile's refresh token: last redeemed, days left before Azure AD's
    90-day inactivity limit, the keep-alive; a warning when few days are left."""
    if not isinstance(life, dict) or not isinstance(life.get("age_s"), int | float):
        return []
    days_left = life.get("days_left")
    keep = life.get("keep_alive_days")
    lines = [
        f"{name}: refresh token last redeemed {_days(life['age_s'])} ago; {_num(days_left)} days "
        f"left before Azure AD's 90-day inactivity limit (keep-alive every {_num(keep)} days)"
    ]
    if isinstance(days_left, int | float) and days_left < DAYS_LEFT_WARNING:
        lines.append(
            f"warning: {name}: the refresh token dies of inactivity in under {DAYS_LEFT_WARNING} "
            f"days: see pc-token-broker doctor {name}"
        )
    return lines


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else "?"


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds // 86400:.0f}d"
    if seconds >= 3600:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 60:.0f}m"


def tenants_table(page: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """`tenants PROFILE`: one line per customer tenant, never a token."""
    up = page.get("upstream") or {}
    head = [
        f"profile {page.get('profile')}: {page.get('tokens', 0)} tokens cached "
        f"(at most {page.get('max_customer_tokens')}), {page.get('tenants_seen', 0)} tenants "
        f"seen; Azure AD calls in flight {up.get('in_flight', 0)}/{up.get('limit', '?')}, "
        f"queued {up.get('queued', 0)}"
    ]
    block = page.get("profile_block")
    if isinstance(block, dict):
        error = block.get("last_error") or {}
        head.append(
            f"every tenant: {block.get('state')} (AADSTS{error.get('aadsts')}) for another "
            f"{_seconds(block.get('retry_in'))}"
        )
    table = [("TENANT", "STATE", "TOKENS", "FAILS", "LAST ERROR", "NEXT")]
    for row in rows:
        error = row.get("last_error") or {}
        last = "-"
        if error:
            last = str(error.get("code", ""))
            if error.get("aadsts"):
                last += f" (AADSTS{error['aadsts']})"
        table.append(
            (
                str(row.get("tenant")),
                str(row.get("state")),
                str(row.get("tokens", 0)),
                str(row.get("failures_in_row", 0)),
                last,
                _seconds(row.get("next_attempt_in")),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(head + body)
