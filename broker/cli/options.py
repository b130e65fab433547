"""The options several commands share (how to find the daemon, the config, a profile, a
tenant), and how each command's help is laid out."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written layout of descriptions and examples."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def add_command(
    sub, name: str, summary: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary}.\n\n{description}".rstrip(),
        epilog=f"example:\n  {example}",
        formatter_class=Formatter,
    )


def target_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        metavar="URL",
        help="the broker's base URL: http://HOST:PORT, HOST:PORT or unix:/PATH "
        "(default: $PC_TOKEN_BROKER_URL, else the config's first listener)",
    )
    where.add_argument(
        "--socket",
        metavar="PATH",
        help="the broker's unix socket (default: $PC_TOKEN_BROKER_SOCKET)",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config to read the address and required header from, [server] only "
        "(default: $PC_TOKEN_BROKER_CONFIG, else /etc/pc-token-broker/config.toml if readable)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        help="how long to wait for the daemon's answer, then exit 3 "
        "(default: $PC_TOKEN_BROKER_TIMEOUT, else 30; healthcheck: 5)",
    )


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="the config file (default: $PC_TOKEN_BROKER_CONFIG, "
        "else /etc/pc-token-broker/config.toml)",
    )


def profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "profile", nargs="?", default="default", metavar="PROFILE", help="(default: default)"
    )
    p.add_argument(
        "--kind",
        choices=("partner", "aad"),
        default=None,
        help="the Partner Center token, or the Azure AD token behind it (default: partner)",
    )


def tenant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tenant",
        metavar="TENANT",
        help="a customer tenant (id or domain) of a profile with customer_tenants: its Azure "
        "AD token instead (default: none)",
    )
    p.add_argument(
        "--scope",
        metavar="SCOPE",
        help="with --tenant: one of the profile's customer_scopes (default: the first); "
        "without: one of the profile's own scopes (an Azure AD token of its own tenant)",
    )
