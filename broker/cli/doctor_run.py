"""`pc-token-broker doctor`, the command: asks the running daemon for its profiles and customer
tenants (with `--online`, first checks them again), and prints doctor.py's findings. Exit 0
healthy, 1 something needs fixing, 2 bad usage, 3 the daemon could not be reached."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from broker.cli.ask import Failed, ask, client, json_of, tenant_pages

# -- doctor: what is wrong, and the fix ------------------------------------------------------


def _profiles(args: argparse.Namespace) -> dict[str, Any]:
    answer = json_of(*ask(args, "GET", "/v1/profiles"))
    profiles = answer.get("profiles") if isinstance(answer, dict) else None
    if not isinstance(profiles, dict):
        raise Failed(1, "the answer has no profiles table (is this the broker?)")
    return profiles


def _tenant_rows(args: argparse.Namespace, name: str, limit: int = 100_000) -> list[Any]:
    """Every customer tenant of the listing (at most `limit`), each a JSON object."""
    pages = tenant_pages(args, name, limit)
    return [r for page in pages for r in page["tenants"] if isinstance(r, dict)][:limit]


def _check_online(args: argparse.Namespace, name: str, row: dict[str, Any]) -> None:
    """At most one daemon request that may reach upstream per thing checked: a forced refresh
    of the profile's own token, and per customer tenant checked a token fetch (the tenant's
    remembered refusal is dropped first when it is unhealthy, so the fetch asks Azure AD)."""
    quoted = urllib.parse.quote(name, safe="")
    kind = "partner" if "partner" in row else "aad"
    ask(args, "POST", f"/v1/token/{quoted}/refresh?kind={kind}")  # its outcome: re-read below
    if "customer_tenants" not in row:
        return
    wanted = (args.tenant or "").lower()
    for t in _tenant_rows(args, name):
        tenant = str(t.get("tenant"))
        if (wanted and tenant != wanted) or (not wanted and t.get("state") in ("ok", "idle")):
            continue
        t_quoted = urllib.parse.quote(tenant, safe="")
        ask(args, "POST", f"/v1/tenants/{quoted}/{t_quoted}/invalidate")
        ask(args, "GET", f"/v1/token/{quoted}?{urllib.parse.urlencode({'tenant': tenant})}")
    if wanted and not any(str(t.get("tenant")) == wanted for t in _tenant_rows(args, name)):
        # Never seen yet: one fetch makes it known (the broker checks it may serve it).
        ask(args, "GET", f"/v1/token/{quoted}?{urllib.parse.urlencode({'tenant': wanted})}")


@client
def cmd_doctor(args: argparse.Namespace) -> int:
    from broker.cli.doctor import profile_findings, render_json, render_text, tenant_findings

    if args.tenant is not None and args.profile is None:
        raise Failed(2, "doctor: --tenant needs a PROFILE")
    profiles = _profiles(args)
    if args.profile is not None and args.profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise Failed(2, f"doctor: no profile {args.profile!r} you may use (profiles: {known})")
    names = [args.profile] if args.profile is not None else sorted(profiles)
    if args.tenant is not None and "customer_tenants" not in profiles[names[0]]:
        raise Failed(2, f"doctor: profile {names[0]!r} has no customer_tenants")
    if args.online:
        for name in names:
            _check_online(args, name, profiles[name])
        profiles = _profiles(args)
    checked = {}
    for name in names:
        row = profiles[name] if isinstance(profiles.get(name), dict) else {}
        findings = profile_findings(name, row)
        if "customer_tenants" in row:
            rows = _tenant_rows(args, name)
            if args.tenant is not None:
                rows = [r for r in rows if str(r.get("tenant")) == args.tenant.lower()]
            findings += tenant_findings(name, row, rows)
        checked[name] = findings
    if args.json:
        print(json.dumps(render_json(checked), indent=2, allow_nan=False))
    else:
        print(render_text(checked))
    return 1 if any(checked.values()) else 0
