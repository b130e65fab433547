"""The command line. Thin: parse arguments, call the module that does the work, set the exit code.

Exit codes: 0 ok; 1 the daemon or upstream answered with an error; 2 bad configuration or
usage; 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from broker import __version__


def _target_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="the broker's base URL (default: from the config)")
    where.add_argument("--socket", help="the broker's unix socket path")
    p.add_argument("--config", help="config file to learn the address and header from")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pc-token-broker", description="Partner Center token broker"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run the daemon")
    p.add_argument(
        "--config",
        help="config file (default: $PC_TOKEN_BROKER_CONFIG, "
        "else /etc/pc-token-broker/config.toml)",
    )
    p = sub.add_parser("check-config", help="validate the config; exit 2 on problems")
    p.add_argument("--config")
    p.add_argument(
        "--online", action="store_true", help="also reach what the config names (Redis: PING)"
    )
    p = sub.add_parser("token", help="print a token from the running daemon")
    p.add_argument("profile", nargs="?", default="default")
    p.add_argument("--kind", choices=("partner", "aad"), default="partner")
    _target_args(p)
    _target_args(sub.add_parser("status", help="a table of every profile's state"))
    p = sub.add_parser("healthcheck", help="exit 0 when the daemon is ready (/readyz)")
    p.add_argument(
        "--live",
        action="store_true",
        help="only check that it is alive (/healthz), for liveness probes",
    )
    _target_args(p)
    p = sub.add_parser("msi-env", help="print the export lines that point Azure SDKs here")
    p.add_argument("profile", nargs="?", help="another profile than [msi] profile")
    p.add_argument("--config")
    sub.add_parser("demo", help="sandbox + broker + many clients; prints what happened")
    p = sub.add_parser("sandbox", help="run only the fake Azure AD and Partner Center")
    p.add_argument("--port", type=int, default=8780)
    p.add_argument("--host", default="127.0.0.1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command.replace("-", "_")
    try:
        return globals()[f"cmd_{command}"](args)
    except KeyboardInterrupt:
        return 130


def _load(path_arg: str | None):
    from broker.config.load import ConfigError, load_settings, resolve_path

    path = resolve_path(path_arg)
    try:
        return load_settings(path), path
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s):", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return None, path


def cmd_serve(args: argparse.Namespace) -> int:
    settings, path = _load(args.config)
    if settings is None:
        return 2
    from broker.daemon.server import serve

    with asyncio.Runner(loop_factory=_loop_factory(settings.server.event_loop)) as runner:
        return runner.run(serve(settings, config_path=path))


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
    settings, path = _load(args.config)
    if settings is None:
        return 2
    from broker.cli.summary import describe

    print(describe(settings, path))
    if getattr(args, "online", False) and settings.shared is not None:
        from broker.core.shared import ping

        problem = asyncio.run(ping(settings.shared))
        if problem is not None:
            print(f"{path}: shared.redis_url: {problem}", file=sys.stderr)
            return 1
        print("  shared cache:    Redis answered PING")
    return 0


def _target(args: argparse.Namespace):
    from broker.cli.client import target_from
    from broker.config.load import resolve_path

    return target_from(args.url, args.socket, resolve_path(args.config))


def cmd_token(args: argparse.Namespace) -> int:
    from broker.cli.client import DaemonUnreachable, error_message, request

    path = f"/v1/token/{args.profile}?kind={args.kind}"
    try:
        status, body = request(_target(args), "GET", path, accept="text/plain")
    except DaemonUnreachable as e:
        print(f"pc-token-broker: {e}", file=sys.stderr)
        return 3
    if status != 200:
        print(f"pc-token-broker: {error_message(status, body)}", file=sys.stderr)
        return 1
    sys.stdout.write(body.decode("ascii") + "\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from broker.cli.client import DaemonUnreachable, error_message, request
    from broker.cli.summary import shared_line, status_table

    try:
        status, body = request(_target(args), "GET", "/v1/profiles")
    except DaemonUnreachable as e:
        print(f"pc-token-broker: {e}", file=sys.stderr)
        return 3
    if status != 200:
        print(f"pc-token-broker: {error_message(status, body)}", file=sys.stderr)
        return 1
    data = json.loads(body)
    print(status_table(data["profiles"]))
    if isinstance(data.get("shared"), dict):
        print(shared_line(data["shared"]))
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from broker.cli.client import DaemonUnreachable, request

    try:
        path = "/healthz" if args.live else "/readyz"
        status, _ = request(_target(args), "GET", path, timeout=5)
    except DaemonUnreachable as e:
        print(f"pc-token-broker: {e}", file=sys.stderr)
        return 3
    return 0 if status == 200 else 1


def cmd_msi_env(args: argparse.Namespace) -> int:
    settings, _ = _load(args.config)
    if settings is None:
        return 2
    from broker.cli.msi_env import export_lines

    try:
        print(export_lines(settings, args.profile))
    except ValueError as e:
        print(f"pc-token-broker msi-env: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(_args: argparse.Namespace) -> int:
    from broker.cli.demo import run_demo

    return asyncio.run(run_demo())


def cmd_sandbox(args: argparse.Namespace) -> int:
    from broker.sandbox.cli import run_sandbox

    return asyncio.run(run_sandbox(args.host, args.port))
