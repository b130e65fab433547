"""The command line. Thin: parse arguments (`parser.py`), call the command (`local.py` for what
runs here, `remote.py` for what asks the daemon), return its exit code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from broker.cli.parser import parser

__all__ = ["main", "parser"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_line: list[str] = []
    if "--" in argv:  # everything after the first -- is exec's command, never parsed
        cut = argv.index("--")
        argv, command_line = argv[:cut], argv[cut + 1 :]
    top = parser()
    args = top.parse_args(argv)
    if args.command == "exec":
        if not command_line:
            top.error("exec needs a command after --: pc-token-broker exec -- COMMAND [ARGS]")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", args.var):
            top.error(f"--var: not an environment variable name: {args.var!r}")
        args.argv = command_line
    elif command_line:
        top.error("'--' is only for exec")
    from broker.cli import local, remote

    name = f"cmd_{args.command.replace('-', '_')}"
    command = getattr(local, name, None) or getattr(remote, name)
    try:
        return int(command(args))
    except KeyboardInterrupt:
        return 130
