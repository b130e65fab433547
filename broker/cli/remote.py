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

from broker.cli.ask import Failed, ask, client, json_of, tenant_pages
from broker.cli.out import fail, shown_lines

# -- commands that ask the running daemon --------------------------------------------------


def _token_path(args: argparse.Namespace, suffix: str = "") -> str:
    profile = urllib.parse.quote(args.profile, safe="")
    tenant = getattr(args, "tenant", None)
    scope = getattr(args, "scope", None)
    if tenant is None and scope is None:
        return f"/v1/token/{profile}{suffix}?kind={args.kind or 'partner'}"
    if tenant is None and suffix:
        raise Failed(2, "--scope needs --tenant here (a forced refresh has no scope)")
    query = {} if tenant is None else {"tenant": tenant}
    if args.scope is not None:
        query["scope"] = args.scope
    if args.kind is not None:  # the broker refuses kind=partner with a tenant, and says why
        query["kind"] = args.kind
    return f"/v1/token/{profile}{suffix}?{urllib.parse.urlencode(query)}"


_TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/=-]{16,65536}")  # JWT or opaque: no spaces, no controls


def _token(args: argparse.Namespace) -> dict[str, Any]:
    token = json_of(*ask(args, "GET", _token_path(args)))
    value = token.get("access_token") if isinstance(token, dict) else None
    if not isinstance(value, str) or not _TOKEN_TEXT.fullmatch(value):
        # Printed for $(...) or put in an environment: nothing else may ride along.
        raise Failed(1, "the answer carries no well-formed access_token (is this the broker?)")
    return token


@client
def cmd_token(args: argparse.Namespace) -> int:
    token = _token(args)
    if args.json:
        sys.stdout.write(json.dumps(token) + "\n")
    else:
        sys.stdout.write(token["access_token"] + "\n")
    return 0


@client
def cmd_refresh(args: argparse.Namespace) -> int:
    answer = json_of(*ask(args, "POST", _token_path(args, "/refresh")))
    if args.json:
        print(json.dumps(answer))
        return 0
    from broker.cli.summary import when

    print(
        f"{answer.get('profile')} {answer.get('kind')}: refreshed, "
        f"expires {when(answer.get('expires_on'), answer.get('expires_in'))}"
    )
    return 0


@client
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


@client
def cmd_status(args: argparse.Namespace) -> int:
    from broker.cli.summary import (
        customer_lines,
        restart_line,
        shared_line,
        status_table,
        troubles,
    )

    answer = json_of(*ask(args, "GET", "/v1/profiles"))
    profiles = answer.get("profiles") if isinstance(answer, dict) else None
    if not isinstance(profiles, dict):
        raise Failed(1, "the answer has no profiles table (is this the broker?)")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        # Built from the daemon's answer: control characters (terminal escapes) shown as '?'.
        print(shown_lines(status_table(profiles)))
        if isinstance(answer.get("shared"), dict):
            print(shown_lines(shared_line(answer["shared"])))
        pending = restart_line(answer.get("restart_pending"))
        if pending:
            print(shown_lines(pending))
        for line in customer_lines(profiles):
            print(shown_lines(line))
    bad = troubles(profiles)
    if bad:
        return fail(
            f"status: {len(bad)} of {len(profiles)} profile(s) in trouble: " + "; ".join(bad), 1
        )
    return 0


@client
def cmd_tenants(args: argparse.Namespace) -> int:
    from broker.cli.summary import tenants_table

    pages = tenant_pages(args, args.profile, args.limit)
    rows = [r for page in pages for r in page["tenants"] if isinstance(r, dict)]
    if args.json:
        print(json.dumps(pages if len(pages) > 1 else pages[0], indent=2))
    else:
        print(shown_lines(tenants_table(pages[0], rows)))
    return 0


@client
def cmd_healthcheck(args: argparse.Namespace) -> int:
    path = "/healthz" if args.live else "/readyz"
    status, body = ask(args, "GET", path, timeout=5)
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
from broker.cli.doctor_run import cmd_doctor  # noqa: E402,F401 - main finds commands here
