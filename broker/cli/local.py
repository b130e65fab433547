"""The commands that work on this machine alone: serve, check-config, msi-env, completion, demo
and sandbox. Each returns its exit code (0 ok, 1 a check failed, 2 bad configuration or usage).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from broker.cli.out import fail

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

    online = args.online and (
        settings.shared is not None
        or any(p.credential == "refresh_token" for p in settings.profiles.values())
    )
    print(describe(settings, path, pending="online checks" if online else None))
    if online:
        if settings.shared is not None:
            from broker.core.cache.shared import ping

            problem = asyncio.run(ping(settings.shared))
            if problem is not None:
                return fail(f"{path}: shared.redis_url: {problem}", 1)
            print("  shared cache:    Redis answered PING")
        from broker.cli.online import mfa_lines

        for line in mfa_lines(settings, path):  # reported; never a failure of its own
            print(line)
        print(f"{path}: OK (online checks passed)")
    return 0


def cmd_msi_env(args: argparse.Namespace) -> int:
    # Profiles' secrets are not read: a tool's user needs only [server], [msi] and the header.
    settings, _ = _load(args.config, mode="msi")
    if settings is None:
        return 2
    from broker.cli.msi_env import export_lines

    try:
        print(export_lines(settings, args.profile, args.tenant, args.imds))
    except ValueError as e:
        return fail(f"msi-env: {e}", 2)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from broker.cli.completion import script
    from broker.cli.parser import parser

    sys.stdout.write(script(parser(), args.shell))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from broker.cli.demo import run_demo

    return asyncio.run(run_demo(keep_log=args.keep_log))


def cmd_sandbox(args: argparse.Namespace) -> int:
    from broker.sandbox.cli import detach, run_sandbox
    from broker.sandbox.roles import Roles

    if args.detach:
        detach()
    roles = Roles(args.user, tuple(args.refused_consent or ()))
    run = run_sandbox(
        args.host,
        args.port,
        args.customer_tenant,
        detach=args.detach,
        broker_port=args.broker_port,
        roles=roles,
    )
    return asyncio.run(run)


def cmd_consent(args: argparse.Namespace) -> int:
    # Offline: the refresh-token file need not exist yet (this command makes it), and no
    # secret is read (the device-code flow is a public-client flow).
    settings, _ = _load(args.config, mode="offline")
    if settings is None:
        return 2
    profile = settings.profiles.get(args.profile)
    if profile is None:
        known = ", ".join(sorted(settings.profiles)) or "none"
        return fail(f"consent: no profile {args.profile!r} (profiles: {known})", 2)
    if profile.credential != "refresh_token" or profile.refresh_token_file is None:
        return fail(
            f"consent: profile {args.profile!r} has credential {profile.credential!r}; consent "
            'obtains a refresh token, for credential = "refresh_token"',
            2,
        )
    from broker.cli.consent import ConsentFailed, consent

    try:
        asyncio.run(consent(profile, sys.stdout, allow_no_mfa=args.allow_no_mfa))
    except ConsentFailed as e:
        return fail(f"consent: {e}", 1)
    return 0
