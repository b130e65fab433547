"""Where the configuration file is. Standard library only: the client commands (`token`,
`status`, ...) import this on their fast path."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_PATH = "/etc/pc-token-broker/config.toml"


def resolve_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> str:
    """The config path: --config, else $PC_TOKEN_BROKER_CONFIG, else the system default."""
    env = os.environ if env is None else env
    return cli_value or env.get("PC_TOKEN_BROKER_CONFIG") or DEFAULT_PATH
