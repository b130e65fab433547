"""The command line's parser: every command and option, with its default, an example per
command, the environment, the files and the exit codes (`pc-token-broker --help` and
`pc-token-broker COMMAND --help` are the manual, and the docs' CLI reference is made from it).
"""

from __future__ import annotations

import argparse

from broker import __version__
from broker.cli.manual import MANUAL, WHERE
from broker.cli.options import (
    Formatter,
    add_command,
    config_arg,
    profile_args,
    target_args,
    tenant_args,
)


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    return parser_and_commands()[0]


def commands() -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name, in the order of `--help` (for the docs' reference and
    the completion scripts; read through the public `choices` of the subparsers action)."""
    return parser_and_commands()[1]


def parser_and_commands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    top = argparse.ArgumentParser(
        prog="pc-token-broker",
        description="pc-token-broker: hands Microsoft Partner Center access tokens to local "
        "tools,\ncached, refreshed ahead of expiry, and fetched once however many ask.",
        epilog=MANUAL,
        formatter_class=Formatter,
    )
    top.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(
        sub,
        "serve",
        "run the daemon",
        "pc-token-broker serve --config /etc/pc-token-broker/config.toml --log-level debug",
        "Runs until SIGTERM or SIGINT (in-flight requests finish; exit 0). SIGHUP re-reads the\n"
        "config; a broken one is refused and the running one kept. Logs go to stderr.",
    )
    config_arg(p)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="overrides [server] log_level for this run (default: the config's, else info)",
    )

    p = add_command(
        sub,
        "check-config",
        "validate a config: a summary and exit 0, or every problem and exit 2",
        "pc-token-broker check-config --offline --config ./config.toml",
        "Problems are listed in file order with FILE:LINE and the key path. Secrets are read\n"
        "(to check them) but never printed. --offline checks syntax, types and keys only,\n"
        "without reading secret files, the environment or the host's users: for the CI of a\n"
        "config repository.",
    )
    config_arg(p)
    checks = p.add_mutually_exclusive_group()
    checks.add_argument(
        "--offline",
        action="store_true",
        help="no secret files, environment variables or host lookups (default: off)",
    )
    checks.add_argument(
        "--online",
        action="store_true",
        help="also reach what the config names (Redis: PING) (default: off)",
    )

    p = add_command(
        sub,
        "token",
        "print a token from the running daemon",
        'curl -H "Authorization: Bearer $(pc-token-broker token)" https://api.partnercenter...',
        "Prints the bare token and a newline, for $(...). On failure: nothing on stdout, one\n"
        "line on stderr, a non-zero exit.\n\n" + WHERE,
    )
    profile_args(p)
    tenant_args(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"access_token", "token_type", "expires_on", "expires_in", "profile", '
        '"kind"} instead of the bare token (default: off)',
    )
    target_args(p)

    p = add_command(
        sub,
        "tenants",
        "the customer tenants of a profile with customer_tenants",
        "pc-token-broker tenants gdap",
        "A table of the customer tenants the broker has seen: state (ok, idle, consent_required,\n"
        "interaction_required, refresh_token_invalid, tenant_not_found, throttled, failing),\n"
        "tokens cached, failures in a row, the last error with its AADSTS code, and when the\n"
        "next attempt may go upstream. Never a token.",
    )
    p.add_argument("profile", metavar="PROFILE")
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="at most this many tenants, in name order (default: 1000)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the broker's JSON pages (default: off)"
    )
    target_args(p)

    p = add_command(
        sub,
        "refresh",
        "force a refresh of a profile's tokens",
        "pc-token-broker refresh billing --json",
        "Fetches a new Azure AD token and, for --kind partner, a new Partner Center token,\n"
        "joining a refresh already in flight. The broker allows one forced refresh per profile\n"
        "every refresh_min_interval seconds (else exit 1, HTTP 429). Prints the new expiry,\n"
        "never the token.",
    )
    profile_args(p)
    p.add_argument("--json", action="store_true", help="print the answer as JSON (default: off)")
    target_args(p)

    p = add_command(
        sub,
        "exec",
        "run a command with the token in its environment",
        "pc-token-broker exec billing -- sh -c 'curl -H \"Authorization: Bearer "
        "$PC_ACCESS_TOKEN\" ...'",
        "Like aws-vault exec: asks the daemon for a token, then replaces itself with COMMAND,\n"
        "whose environment has the token in $PC_ACCESS_TOKEN (or --var NAME) and its expiry\n"
        "as Unix seconds in $PC_ACCESS_TOKEN_EXPIRES_ON. The exit code is COMMAND's. The token\n"
        "never appears on a command line. Everything after -- is the command. Exit 127 when\n"
        "COMMAND is not found, 126 when it cannot be run, 1-3 as the other commands when no\n"
        "token could be had (COMMAND is then not run).",
    )
    p.usage = (
        "%(prog)s [-h] [--kind {partner,aad}] [--var NAME] [--url URL | --socket PATH]\n"
        "       [--config PATH] [--timeout SECONDS] [PROFILE] -- COMMAND [ARG ...]"
    )
    profile_args(p)
    p.add_argument(
        "--var",
        default="PC_ACCESS_TOKEN",
        metavar="NAME",
        help="the variable to put the token in (default: PC_ACCESS_TOKEN)",
    )
    target_args(p)

    p = add_command(
        sub,
        "status",
        "every profile's state",
        "pc-token-broker status --json | jq '.profiles.default.partner.expires_in'",
        "A table per profile and kind: state (fresh, refreshing, stale, failing, empty), expires\n"
        "in, next refresh attempt, failures in a row, last error, upstream calls. Exit 1 (and\n"
        "one line on stderr) while any profile is failing or stale, so it can be a check.",
    )
    p.add_argument(
        "--json", action="store_true", help="print the broker's /v1/profiles JSON (default: off)"
    )
    target_args(p)

    # -- customer tenants' operators (issue #26): doctor, consent ------------------------
    p = add_command(
        sub,
        "doctor",
        "what is wrong with a profile and its customer tenants, and the fix",
        "pc-token-broker doctor gdap --tenant contoso.onmicrosoft.com --online",
        "Reads the running daemon's state. For each profile (or PROFILE), and each of its\n"
        "customer tenants that is not healthy: what is wrong in words, the AADSTS code, trace\n"
        "and correlation ids and since when, what the broker is doing about it (cool-down,\n"
        "next attempt), and the fix (the admin-consent URL, MFA, GDAP, a new refresh token).\n"
        "Also warns when the refresh token nears Azure AD's 90-day inactivity limit. Exit 0\n"
        "healthy, 1 something needs fixing, 2 bad usage, 3 the daemon could not be reached.",
    )
    p.add_argument("profile", nargs="?", metavar="PROFILE", help="only this profile")
    p.add_argument(
        "--tenant",
        metavar="TENANT",
        help="only this customer tenant of PROFILE (default: every unhealthy one)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="check again now: a forced refresh of the profile's token and one token request "
        "per customer tenant checked (its remembered refusal dropped first) (default: off)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON (default: off)")
    target_args(p)

    p = add_command(
        sub,
        "consent",
        "obtain a profile's refresh token by signing in with a device code",
        "pc-token-broker consent gdap --config /etc/pc-token-broker/config.toml",
        "The device-code flow (as New-PartnerAccessToken -UseDeviceAuthentication): prints a\n"
        "code and a URL; a partner user opens it, signs in with MFA and consents; the command\n"
        "polls Azure AD (honouring slow_down and the code's expiry), checks that the sign-in\n"
        "had MFA (the token's amr claim), and writes the refresh token to the profile's\n"
        "refresh_token_file: mode 0600, atomically (a new file renamed over the old), never\n"
        "printed. The app registration must allow public client flows. Exit 0 written; 1 the\n"
        "flow failed, expired, was declined or had no MFA (nothing written); 2 bad usage.",
    )
    p.add_argument("profile", metavar="PROFILE", help='a profile with credential = "refresh_token"')
    p.add_argument(
        "--allow-no-mfa",
        action="store_true",
        help="write the token even if the sign-in had no MFA (Partner Center will refuse it; "
        "for customer tenants that do not require MFA) (default: off)",
    )
    config_arg(p)

    p = add_command(
        sub,
        "healthcheck",
        "exit 0 when the daemon is ready",
        "HEALTHCHECK CMD pc-token-broker healthcheck --socket /run/pc-token-broker/broker.sock",
        "Asks /readyz: ready when every warm profile holds a servable token. Not ready: exit 1\n"
        "and one line on stderr naming the profiles that are not. For container HEALTHCHECKs\n"
        "and Kubernetes exec probes (images need no curl).",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="only check that it is alive (/healthz), for liveness probes (default: off)",
    )
    target_args(p)

    p = add_command(
        sub,
        "msi-env",
        "print the export lines that point Azure SDKs here",
        'eval "$(pc-token-broker msi-env)"',
        "Prints IDENTITY_ENDPOINT and IDENTITY_HEADER (and AZURE_CLIENT_ID for another profile)\n"
        "for the managed-identity endpoint. Reads [server], [msi] and the identity header file\n"
        "only: no profile's secret, so it works as any user who may read the header file.",
    )
    p.add_argument(
        "profile", nargs="?", metavar="PROFILE", help="another profile than [msi] profile"
    )
    p.add_argument(
        "--tenant",
        metavar="TENANT",
        help="a customer tenant: IDENTITY_ENDPOINT becomes /msi/tenants/TENANT/token "
        "(default: none)",
    )
    p.add_argument(
        "--imds",
        action="store_true",
        help="the IMDS route instead ([msi] imds = true): prints "
        "AZURE_POD_IDENTITY_AUTHORITY_HOST, no secret (default: off)",
    )
    config_arg(p)

    p = add_command(
        sub,
        "completion",
        "print the shell completion script",
        "pc-token-broker completion bash > /etc/bash_completion.d/pc-token-broker",
        "bash: source the output (or install it in /etc/bash_completion.d/). zsh: source the\n"
        "output from ~/.zshrc (it uses zsh's bashcompinit). fish: save it as\n"
        "~/.config/fish/completions/pc-token-broker.fish. Profile names complete too, asked of\n"
        "the running daemon (status --json, 1 s at most).",
    )
    p.add_argument("shell", choices=("bash", "zsh", "fish"))

    p = add_command(
        sub,
        "demo",
        "sandbox + broker + 300 clients; prints what happened",
        "pc-token-broker demo",
        "Runs for about 25 s and exits 0 only if the guarantees held.",
    )
    p.add_argument(
        "--keep-log",
        action="store_true",
        help="keep the broker's log file (several MB; kept anyway when a guarantee fails)",
    )

    p = add_command(
        sub,
        "sandbox",
        "run only the fake Azure AD and Partner Center",
        "pc-token-broker sandbox --port 8780",
        "For your own integration tests and a first try. Prints a broker config for it, valid\n"
        "TOML as printed (> sandbox.toml): the sandbox app's profile, the mirror's upstream,\n"
        "[msi], and with --customer-tenant a refresh-token profile `customers` serving those\n"
        "tenants. Its secret and refresh token are in a temporary folder removed when it stops.\n"
        "Stop it with Ctrl-C (or kill PID, printed first).",
    )
    p.add_argument(
        "--customer-tenant",
        action="append",
        metavar="NAME[=GUID]",
        help="a customer tenant to play (repeatable): NAME.onmicrosoft.com, or NAME if it has a "
        "dot; its id GUID, else one made from the name (default: none)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="return once it listens and the config is printed; it runs on in the background "
        "(default: off)",
    )
    p.add_argument(
        "--broker-port",
        type=int,
        default=8721,
        metavar="N",
        help="the port the printed config has the broker listen on (default: 8721)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8780,
        help="the port the sandbox listens on (default: 8780; 0 for any free port)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address it listens on (default: 127.0.0.1; keep it on loopback)",
    )
    sandbox_roles(p)
    return top, dict(sub.choices)


def sandbox_roles(p: argparse.ArgumentParser) -> None:
    """`sandbox`'s roles for customer-tenant operators (issue #26): a user, a refused consent."""

    def tenant(text: str) -> tuple[str, str]:
        from broker.sandbox.roles import tenant_arg  # only when the option is given

        try:
            return tenant_arg(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument(
        "--user",
        choices=("mfa", "no-mfa"),
        help="a partner user for refresh_token profiles, signing in with MFA or without; the "
        "sandbox approves device codes at once (pc-token-broker consent) (default: none)",
    )
    p.add_argument(
        "--refused-consent",
        action="append",
        type=tenant,
        metavar="NAME[=GUID]",
        help="a customer tenant whose admin refused consent: every token asked there is "
        "refused with AADSTS65001; repeatable (default: none)",
    )
