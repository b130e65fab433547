"""The commands that ask the running daemon: token, refresh, exec, status, tenants and
healthcheck. Exit codes: 0 ok; 1 the daemon answered with an error (or, for `status`, a profile
is failing; for `healthcheck`, not ready); 2 bad usage; 3 the daemon could not be reached.
Every failure is one line on stderr; stdout carries only what was asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.parse
from typing import Any

from broker.cli.out import fail

# -- commands that ask the running daemon --------------------------------------------------


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


TIMEOUT = 30.0  # seconds a client command waits for the daemon: a cold fetch waits on upstream
# for at most upstream_timeout (10 s by default), so this leaves room; --timeout or the variable
# below changes it (healthcheck: 5 s unless asked, as a probe must answer before its own timeout)
ENV_TIMEOUT = "PC_TOKEN_BROKER_TIMEOUT"


def timeout_of(args: argparse.Namespace, default: float = TIMEOUT) -> float:
    """--timeout, else $PC_TOKEN_BROKER_TIMEOUT, else `default`: seconds, over 0, at most 3600."""
    given, origin = getattr(args, "timeout", None), "--timeout"
    if given is None and os.environ.get(ENV_TIMEOUT):
        given, origin = os.environ[ENV_TIMEOUT], f"${ENV_TIMEOUT}"
    if given is None:
        return default
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # NaN fails too
        raise _Failed(2, f"{origin}: a number of seconds over 0 and at most 3600, not {given!r}")
    return seconds


def _ask(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    from broker.cli.client import DaemonUnreachable, TargetError, request, target_from
    from broker.config.paths import resolve_path  # the schema only if [server] must be read

    explicit = bool(args.config or os.environ.get("PC_TOKEN_BROKER_CONFIG"))
    kwargs["timeout"] = timeout_of(args, kwargs.get("timeout", TIMEOUT))
    try:
        target = target_from(args.url, args.socket, resolve_path(args.config), explicit=explicit)
        return request(target, method, path, **kwargs)
    except TargetError as e:
        raise _Failed(2, str(e)) from None
    except DaemonUnreachable as e:
        raise _Failed(3, str(e)) from None


def _answer(status: int, body: bytes) -> Any:
    """The JSON of a 200, else _Failed with the broker's error as one line."""
    from broker.cli.client import error_message

    if status != 200:
        raise _Failed(1, error_message(status, body))
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a hostile answer nested deep
        raise _Failed(1, f"HTTP {status}: the answer is not JSON (is this the broker?)") from None


def _token_path(args: argparse.Namespace, suffix: str = "") -> str:
    profile = urllib.parse.quote(args.profile, safe="")
    tenant = getattr(args, "tenant", None)
    scope = getattr(args, "scope", None)
    if tenant is None and scope is None:
        return f"/v1/token/{profile}{suffix}?kind={args.kind or 'partner'}"
    if tenant is None and suffix:
        raise _Failed(2, "--scope needs --tenant here (a forced refresh has no scope)")
    query = {} if tenant is None else {"tenant": tenant}
    if args.scope is not None:
        query["scope"] = args.scope
    if args.kind is not None:  # the broker refuses kind=partner with a tenant, and says why
        query["kind"] = args.kind
    return f"/v1/token/{profile}{suffix}?{urllib.parse.urlencode(query)}"


def _client(run):
    """Turns _Failed into its exit code and one line on stderr."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Failed as e:
            return fail(str(e), e.code)

    wrapper.__name__ = run.__name__
    return wrapper


_TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/=-]{16,65536}")  # JWT or opaque: no spaces, no controls


def _token(args: argparse.Namespace) -> dict[str, Any]:
    token = _answer(*_ask(args, "GET", _token_path(args)))
    value = token.get("access_token") if isinstance(token, dict) else None
    if not isinstance(value, str) or not _TOKEN_TEXT.fullmatch(value):
        # Printed for $(...) or put in an environment: nothing else may ride along.
        raise _Failed(1, "the answer carries no well-formed access_token (is this the broker?)")
    return token


@_client
def cmd_token(args: argparse.Namespace) -> int:
    token = _token(args)
    if args.json:
        sys.stdout.write(json.dumps(token) + "\n")
    else:
        sys.stdout.write(token["access_token"] + "\n")
    return 0


@_client
def cmd_refresh(args: argparse.Namespace) -> int:
    answer = _answer(*_ask(args, "POST", _token_path(args, "/refresh")))
    if args.json:
        print(json.dumps(answer))
        return 0
    from broker.cli.summary import when

    print(
        f"{answer.get('profile')} {answer.get('kind')}: refreshed, "
        f"expires {when(answer.get('expires_on'), answer.get('expires_in'))}"
    )
    return 0


@_client
def cmd_exec(args: argparse.Namespace) -> int:
    token = _token(args)
    env = dict(os.environ)
    env[args.var] = token["access_token"]
    env[f"{args.var}_EXPIRES_ON"] = str(token.get("expires_on", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(args.argv[0], args.argv, env)  # noqa: S606 - running it is the point
    except FileNotFoundError:
        return fail(f"exec: {args.argv[0]}: command not found", 127)
    except OSError as e:
        return fail(f"exec: {args.argv[0]}: {e.strerror or e}", 126)
    raise AssertionError("unreachable: execvpe returned")


@_client
def cmd_status(args: argparse.Namespace) -> int:
    from broker.cli.summary import (
        customer_lines,
        restart_line,
        shared_line,
        status_table,
        troubles,
    )

    answer = _answer(*_ask(args, "GET", "/v1/profiles"))
    profiles = answer.get("profiles") if isinstance(answer, dict) else None
    if not isinstance(profiles, dict):
        raise _Failed(1, "the answer has no profiles table (is this the broker?)")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(status_table(profiles))
        if isinstance(answer.get("shared"), dict):
            print(shared_line(answer["shared"]))
        pending = restart_line(answer.get("restart_pending"))
        if pending:
            print(pending)
        for line in customer_lines(profiles):
            print(line)
    bad = troubles(profiles)
    if bad:
        return fail(
            f"status: {len(bad)} of {len(profiles)} profile(s) in trouble: " + "; ".join(bad), 1
        )
    return 0


@_client
def cmd_tenants(args: argparse.Namespace) -> int:
    from broker.cli.summary import tenants_table

    profile = urllib.parse.quote(args.profile, safe="")
    pages: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while len(rows) < args.limit:
        query = {"limit": str(min(1000, max(1, args.limit - len(rows))))}
        if after:
            query["after"] = after
        page = _answer(*_ask(args, "GET", f"/v1/tenants/{profile}?{urllib.parse.urlencode(query)}"))
        if not isinstance(page, dict) or not isinstance(page.get("tenants"), list):
            raise _Failed(1, "the answer has no tenants list (is this the broker?)")
        pages.append(page)
        rows += page["tenants"]
        after = page.get("next")
        if not after:
            break
    if args.json:
        print(json.dumps(pages if len(pages) > 1 else pages[0], indent=2))
    else:
        print(tenants_table(pages[0], rows))
    return 0


@_client
def cmd_healthcheck(args: argparse.Namespace) -> int:
    path = "/healthz" if args.live else "/readyz"
    status, body = _ask(args, "GET", path, timeout=5)
    if status == 200:
        return 0
    detail = ""
    try:
        profiles = json.loads(body)["profiles"]
        detail = ": " + ", ".join(
            f"{name} {kind} {state}"
            for name, kinds in sorted(profiles.items())
            for kind, state in sorted(kinds.items())
            if state != "fresh"
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return fail(f"not {'alive' if args.live else 'ready'} (HTTP {status} from {path}){detail}", 1)


# -- the rest ------------------------------------------------------------------------------


# -- doctor: what is wrong, and the fix ------------------------------------------------------


def _profiles(args: argparse.Namespace) -> dict[str, Any]:
    answer = _answer(*_ask(args, "GET", "/v1/profiles"))
    profiles = answer.get("profiles") if isinstance(answer, dict) else None
    if not isinstance(profiles, dict):
        raise _Failed(1, "the answer has no profiles table (is this the broker?)")
    return profiles


def _tenant_rows(args: argparse.Namespace, name: str, limit: int = 100_000) -> list[Any]:
    rows: list[Any] = []
    after: str | None = None
    quoted = urllib.parse.quote(name, safe="")
    while len(rows) < limit:
        query = {"limit": "1000", **({"after": after} if after else {})}
        page = _answer(*_ask(args, "GET", f"/v1/tenants/{quoted}?{urllib.parse.urlencode(query)}"))
        if not isinstance(page, dict) or not isinstance(page.get("tenants"), list):
            raise _Failed(1, "the answer has no tenants list (is this the broker?)")
        rows += [r for r in page["tenants"] if isinstance(r, dict)]
        after = page.get("next")
        if not after:
            break
    return rows


def _check_online(args: argparse.Namespace, name: str, row: dict[str, Any]) -> None:
    """At most one daemon request that may reach upstream per thing checked: a forced refresh
    of the profile's own token, and per customer tenant checked a token fetch (the tenant's
    remembered refusal is dropped first when it is unhealthy, so the fetch asks Azure AD)."""
    quoted = urllib.parse.quote(name, safe="")
    kind = "partner" if "partner" in row else "aad"
    _ask(args, "POST", f"/v1/token/{quoted}/refresh?kind={kind}")  # its outcome: re-read below
    if "customer_tenants" not in row:
        return
    wanted = (args.tenant or "").lower()
    for t in _tenant_rows(args, name):
        tenant = str(t.get("tenant"))
        if (wanted and tenant != wanted) or (not wanted and t.get("state") in ("ok", "idle")):
            continue
        t_quoted = urllib.parse.quote(tenant, safe="")
        _ask(args, "POST", f"/v1/tenants/{quoted}/{t_quoted}/invalidate")
        _ask(args, "GET", f"/v1/token/{quoted}?{urllib.parse.urlencode({'tenant': tenant})}")
    if wanted and not any(str(t.get("tenant")) == wanted for t in _tenant_rows(args, name)):
        # Never seen yet: one fetch makes it known (the broker checks it may serve it).
        _ask(args, "GET", f"/v1/token/{quoted}?{urllib.parse.urlencode({'tenant': wanted})}")


@_client
def cmd_doctor(args: argparse.Namespace) -> int:
    from broker.cli.doctor import profile_findings, render_json, render_text, tenant_findings

    if args.tenant is not None and args.profile is None:
        raise _Failed(2, "doctor: --tenant needs a PROFILE")
    profiles = _profiles(args)
    if args.profile is not None and args.profile not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise _Failed(2, f"doctor: no profile {args.profile!r} you may use (profiles: {known})")
    names = [args.profile] if args.profile is not None else sorted(profiles)
    if args.tenant is not None and "customer_tenants" not in profiles[names[0]]:
        raise _Failed(2, f"doctor: profile {names[0]!r} has no customer_tenants")
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
        print(json.dumps(render_json(checked), indent=2))
    else:
        print(render_text(checked))
    return 1 if any(checked.values()) else 0
