"""Human-readable text: the `check-config` summary and the `status` table. Never a secret:
only where a secret comes from ("file /x", "env NAME"), never its value."""

from __future__ import annotations

from typing import Any

from broker.config.settings import Settings


def describe(settings: Settings, path: str) -> str:
    s = settings.server
    lines = [
        f"{path}: OK",
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
            f"      scope {p.scope}; generatetoken {p.generatetoken_url}",
            f"      refresh at max({p.min_refresh_margin:g} s, {p.refresh_ahead:g} x lifetime) "
            f"before expiry; serve while >= {p.min_remaining:g} s left; "
            f"upstream timeout {p.upstream_timeout:g} s",
        ]
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
    for warning in settings.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


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
