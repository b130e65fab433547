"""The manual's shared text: exit codes, how the client commands find the daemon, the
environment and the files (the parser puts it under `--help`)."""

from __future__ import annotations

EXIT_CODES = """\
exit codes:
  0    done; for status: every profile is fresh, refreshing or not yet asked for
  1    the broker answered with an error (one line on stderr); for status: a profile is
       failing or stale (its last refresh failed); for healthcheck: not ready
  2    bad usage, or a configuration that cannot be read or is invalid (every problem listed)
  3    the broker could not be reached
  126, 127  exec: the command could not be run / was not found
  130  interrupted (Ctrl-C)"""

WHERE = """\
finding the daemon (token, refresh, exec, status, healthcheck, tenants, doctor), first match wins:
  --url URL or --socket PATH; else $PC_TOKEN_BROKER_URL or $PC_TOKEN_BROKER_SOCKET; else the
  first `listen` entry of the config's [server] table; else http://127.0.0.1:8721. The
  required header comes from $PC_TOKEN_BROKER_HEADER, else the config, else "Metadata: true".
  Only [server] is read from the config (checked as serve checks it; no secret is read). A
  config named with --config or $PC_TOKEN_BROKER_CONFIG must be readable TOML (else exit 2),
  and a [server] table serve would refuse is exit 2 wherever it is; the default path may be
  missing or unreadable (a config that holds no secret is 0644 and readable by tools; one with
  an inline secret should be 0600, and then tools need the variables). A command waits 30 s
  for the answer (--timeout, $PC_TOKEN_BROKER_TIMEOUT), then exits 3."""

MANUAL = f"""\
Every command has --help with its options, their defaults and an example.

{WHERE}

environment:
  PC_TOKEN_BROKER_CONFIG  the config path when --config is not given
                          (default: /etc/pc-token-broker/config.toml)
  PC_TOKEN_BROKER_URL     the daemon's base URL for the client commands
  PC_TOKEN_BROKER_SOCKET  the daemon's unix socket for the client commands
  PC_TOKEN_BROKER_HEADER  the required header ("Name: value") for the client commands
  PC_TOKEN_BROKER_TIMEOUT seconds the client commands wait for an answer (default: 30)
  PC_ACCESS_TOKEN         set by `exec` for the command it runs (rename with --var)

files:
  /etc/pc-token-broker/config.toml   the configuration (see config.example.toml)

{EXIT_CODES}

examples:
  pc-token-broker check-config --config /etc/pc-token-broker/config.toml
  TOKEN=$(pc-token-broker token)
  pc-token-broker exec billing -- ./partner-report.sh
  pc-token-broker status --socket /run/pc-token-broker/broker.sock"""
