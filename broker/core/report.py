"""What the operators see of the snapshot in force: readiness, the systemd STATUS line, the
per-profile gauges of /metrics, MFA. Pure functions of a `Runtime`; never a token."""

from __future__ import annotations

from typing import Any

from broker.core.cache import EntryStatus
from broker.core.keepalive import token_life
from broker.core.runtime import Runtime


def mfa(runtime: Runtime, name: str) -> bool | None:
    """Whether the profile's own (Partner Center) Azure AD token shows MFA in `amr`; None
    when unknown or not an app+user credential. Partner Center refuses app+user calls
    without MFA (401, error 900421)."""
    profile = runtime.profiles.get(name)
    return None if profile is None else profile.credential.mfa


def refresh_token(runtime: Runtime, name: str, now: float) -> dict[str, Any] | None:
    """A refresh_token profile's refresh token at wall `now`: when last redeemed, its age, the
    days left before Azure AD's 90-day inactivity limit, the keep-alive period and when it
    next looks (monotonic seconds from now are not known here: `next_keep_alive` is the
    wall time). None for other credentials, or when nothing is known."""
    profile = runtime.profiles.get(name)
    if profile is None:
        return None
    life = token_life(profile.credential.last_redeemed(), now)
    if life is None:
        return None
    life["keep_alive_days"] = profile.settings.keep_alive_days
    return life


def profile_gauges(runtime: Runtime, now: float) -> list[dict[str, Any]]:
    """Per-profile figures for /metrics: MFA, the refresh token's age, customer-tenant
    counts. No tenant ids."""
    rows = []
    for name, profile in runtime.profiles.items():
        row: dict[str, Any] = {"profile": name, "mfa": mfa(runtime, name)}
        life = refresh_token(runtime, name, now)
        if life is not None:
            row["refresh_token_age"] = life["age_s"]
        cache = profile.tenants
        if cache is not None:
            row.update(
                tokens=len(cache),
                states=cache.states(),
                in_flight=cache.limiter.active,
                queued=cache.limiter.queued,
                evicted=cache.evicted,
            )
        rows.append(row)
    return rows


def statuses(runtime: Runtime) -> list[EntryStatus]:
    return [entry.status() for entry in runtime.entries()]


def ready(runtime: Runtime) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Ready when every warm profile holds servable tokens of both kinds."""
    ok = True
    detail: dict[str, dict[str, Any]] = {}
    for name, profile in runtime.profiles.items():
        if not profile.settings.warm:
            continue
        for kind, entry in profile.entries.items():
            s = entry.status()
            ok = ok and s.servable
            detail.setdefault(name, {})[kind] = s.state
    return ok, detail


def summary(runtime: Runtime) -> str:
    """One line for systemd's STATUS=: profiles by state, the worst error."""
    states: dict[str, int] = {}
    failing = []
    for s in statuses(runtime):
        if s.kind == "partner":
            states[s.state] = states.get(s.state, 0) + 1
            if s.last_error and not s.servable:
                failing.append(s.profile)
    parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    text = f"{len(runtime.settings.profiles)} profiles" + (f" ({parts})" if parts else "")
    if failing:
        text += f"; failing: {', '.join(sorted(failing))}"
    if runtime.restart_pending:
        text += f"; restart needed for {', '.join(runtime.restart_pending)}"
    return text
