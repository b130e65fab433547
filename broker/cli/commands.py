"""What each command does, once `main.py` has parsed its arguments. Returns the exit code.

Exit codes: 0 ok; 1 the daemon answered with an error (or, for `status`, a profile is failing;
for `healthcheck`, not ready); 2 bad configuration or usage; 3 the daemon could not be reached.
Every failure is one line on stderr; stdout carries only what was asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import urllib.parse
from typing import Any

PROG = "pc-token-broker"


def _fail(message: str, code: int) -> int:
    """One line on stderr: whitespace collapsed, control characters (a hostile answer's
    terminal escapes) shown as '?'."""
    line = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    print(f"{PROG}: {line}", file=sys.stderr)
    return code


# -- commands that read the whole config ---------------------------------------------------


def _load(path_arg: str | None, *, mode: str = "full"):
    from broker.config.load import ConfigError, load_settings, resolve_path

    path = resolve_path(path_arg)
    try:
        return load_settings(path, mode=mode), path
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s):", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return None, path


def _host_problems(settings, path: str) -> bool:
    """Print what this host lacks for the config (a socket's missing directory); True if any."""
    from broker.config.load import host_problems

    problems = host_problems(settings)
    if problems:
        print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return bool(problems)


def cmd_serve(args: argparse.Namespace) -> int:
    settings, path = _load(args.config)
    if settings is None:
        return 2
    activated = os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID") in (
        None,
        str(os.getpid()),
    )
    if not activated and _host_problems(settings, path):  # systemd's sockets need no folder
        return 2
    from broker.daemon.server import serve
    from broker.observe.logs import make_logger
    from broker.observe.redact import Redactor

    redactor = Redactor()
    log = make_logger(
        fmt=settings.server.log_format,
        level=args.log_level or settings.server.log_level,
        redactor=redactor,
    )
    with asyncio.Runner(loop_factory=_loop_factory(settings.server.event_loop)) as runner:
        return runner.run(serve(settings, config_path=path, log=log, redactor=redactor))


def _loop_factory(choice: str):
    """uvloop when asked for, or when "auto" and installed (the `speed` extra); else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def cmd_check_config(args: argparse.Namespace) -> int:
    settings, path = _load(args.config, mode="offline" if args.offline else "full")
    if settings is None:
        return 2
    from broker.cli.summary import describe

    if not args.offline and _host_problems(settings, path):
        return 2

    print(describe(settings, path))
    if args.online and settings.shared is not None:
        from broker.core.shared import ping

        problem = asyncio.run(ping(settings.shared))
        if problem is not None:
            return _fail(f"{path}: shared.redis_url: {problem}", 1)
        print("  shared cache:    Redis answered PING")
    return 0


def cmd_msi_env(args: argparse.Namespace) -> int:
    # Profiles' secrets are not read: a tool's user needs only [server], [msi] and the header.
    settings, _ = _load(args.config, mode="msi")
    if settings is None:
        return 2
    from broker.cli.msi_env import export_lines

    try:
        print(export_lines(settings, args.profile, args.tenant))
    except ValueError as e:
        return _fail(f"msi-env: {e}", 2)
    return 0


# -- commands that ask the running daemon --------------------------------------------------


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _ask(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    from broker.cli.client import DaemonUnreachable, TargetError, request, target_from
    from broker.config.paths import resolve_path  # the schema only if [server] must be read

    explicit = bool(args.config or os.environ.get("PC_TOKEN_BROKER_CONFIG"))
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
    if tenant is None:
        if getattr(args, "scope", None) is not None:
            raise _Failed(2, "--scope needs --tenant")
        return f"/v1/token/{profile}{suffix}?kind={args.kind or 'partner'}"
    query = {"tenant": tenant}
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
            return _fail(str(e), e.code)

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
        return _fail(f"exec: {args.argv[0]}: command not found", 127)
    except OSError as e:
        return _fail(f"exec: {args.argv[0]}: {e.strerror or e}", 126)
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
        return _fail(
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
    return _fail(f"not {'alive' if args.live else 'ready'} (HTTP {status} from {path}){detail}", 1)


# -- the rest ------------------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    from broker.cli.completion import script
    from broker.cli.main import parser

    sys.stdout.write(script(parser(), args.shell))
    return 0


def cmd_demo(_args: argparse.Namespace) -> int:
    from broker.cli.demo import run_demo

    return asyncio.run(run_demo())


def cmd_sandbox(args: argparse.Namespace) -> int:
    from broker.sandbox.cli import run_sandbox

    return asyncio.run(run_sandbox(args.host, args.port))
