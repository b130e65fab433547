"""TOML configuration → frozen, typed settings.

The file is checked against the schema (`schema.py`: types, bounds, formats, unknown keys), then
each table is read (`sections.py`, `profiles.py`: secrets, files, names, the checks across keys).
Every problem is collected (not just the first) with its key path and, where the line scan finds
it, file and line. Secrets are read from `*_file` (with `${VAR}` expansion, e.g. systemd's
`$CREDENTIALS_DIRECTORY`) or `*_env`, held as `Secret`, never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from broker.config.errors import ConfigError, Problem
from broker.config.files import CONFIG_LIMIT, read_bounded
from broker.config.paths import DEFAULT_PATH, resolve_path
from broker.config.problems import report, salvage, valid_part
from broker.config.profile_schema import PROFILE_KEYS, is_tenant
from broker.config.profiles import read_profiles
from broker.config.read import Reader
from broker.config.schema import ConfigFile, MirrorSection, MsiSection, ServerSection, SharedSection
from broker.config.sections import read_mirror, read_msi, read_server, read_shared
from broker.config.settings import Settings
from broker.config.tomlpos import key_lines

__all__ = [
    "DEFAULT_PATH",
    "PROFILE_KEYS",
    "ConfigError",
    "host_problems",
    "is_tenant",
    "load_settings",
    "parse_settings",
    "resolve_path",
]

M = TypeVar("M", bound=BaseModel)
MODES = ("full", "offline", "msi")


def _toml(text: str, file: str | None) -> dict[str, Any]:
    """The document, or ConfigError with the syntax error's line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r"\(at line (\d+)", str(e))  # 3.11 has no e.lineno
        line = int(at.group(1)) if at else None
        message = str(e).split(" (at")[0]
        if line is None and message.startswith("Unclosed array"):
            line = _open_array(text)
        message = next((f"{message}: {hint}" for m, hint in _EXPECTED if m in message), message)
        raise ConfigError([Problem("(syntax)", message, file, line)]) from None
    except RecursionError:  # a few KB of "[[[..." or "{a = {a = ..." exhausts tomllib's stack
        message = "arrays or inline tables nested too deeply to parse"
        raise ConfigError([Problem("(syntax)", message, file, None)]) from None


# tomllib's messages that do not say what was expected, and what was.
_EXPECTED = (
    ("Invalid value", 'expected a value: a "quoted string", a number, true or false, a date, '
     "[an, array] or {an = inline_table}"),
    ("Unclosed array", "expected ']' to close the array opened here (an array may span lines, "
     "so an open one runs on to the end of the file)"),
    ("Unclosed inline table", "expected '}' on the same line (an inline table is one line)"),
    ("Illegal character '\\n'", "expected the string's closing quote on the same line"),
    ("Cannot overwrite a value", "this key is set twice in its table (each key once)"),
    ("twice", "this table is declared twice (each [table] once)"),
    ("after a statement", 'one key = value a line; a string needs "quotes" (host:port, paths)'),
)  # fmt: skip


def _open_array(text: str) -> int | None:
    """The line of the last `key = [` whose brackets do not close on its own line."""
    found = None
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("=", 1)[1] if "=" in line else ""
        if value.lstrip().startswith("[") and value.count("[") > value.count("]"):
            found = number
    return found


def parse_settings(
    text: str,
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    mode: str = "full",
) -> Settings:
    """Validate a TOML document. Raises ConfigError listing every problem, in line order.

    mode "full" reads every secret and checks every file, as `serve` needs; "offline" reads
    no secret file, environment variable or host database (`check-config --offline`, for the
    CI of config repositories); "msi" is offline except for [msi], so `msi-env` needs the
    config and the identity header file, none of the other secrets.
    """
    assert mode in MODES, mode
    env = os.environ if env is None else env
    base = base_dir or (Path(file).resolve().parent if file else Path.cwd())
    data = _toml(text, file)
    if not data:
        raise ConfigError(
            [Problem("(file)", "no settings: the file is empty or only comments", file)]
        )
    r = Reader(file, key_lines(text), env, base)
    # First the file as written, every key against the schema; then each table read, its
    # failed keys at their defaults so that the checks across keys still run.
    failed: set[tuple[str, ...]] = set()
    try:
        ConfigFile.model_validate(data)
    except ValidationError as e:
        failed = report(r, e, ConfigFile)

    def section(model: type[M], name: str) -> M | None:
        """The table as validated, its failed keys at their defaults; None when absent."""
        return salvage(model, data[name], (name,), failed) if name in data else None

    def written(name: str) -> set[str]:
        raw = data.get(name)
        return set(raw) if isinstance(raw, dict) else set()

    r.offline = mode != "full"
    server = section(ServerSection, "server") or ServerSection()
    server_settings = read_server(r, server, written("server"))
    profiles = read_profiles(r, data, failed)
    cloud = valid_part(data.get("defaults"), ("defaults",), failed).get("cloud")
    mirror = section(MirrorSection, "mirror") or MirrorSection()
    mirror_settings = read_mirror(r, mirror, cloud, written("mirror"))
    r.offline = mode == "offline"  # "msi": [msi] is read in full
    msi = read_msi(r, section(MsiSection, "msi"), profiles)
    r.offline = mode != "full"
    shared = read_shared(r, section(SharedSection, "shared"))
    if r.problems:
        # In the order of the file, as an editor shows it; problems with no line go last.
        raise ConfigError(sorted(r.problems, key=lambda p: (p.line is None, p.line or 0)))
    return Settings(
        server=server_settings,
        profiles=MappingProxyType(profiles),
        mirror=mirror_settings,
        msi=msi,
        shared=shared,
        source=file,
        warnings=tuple(r.warnings),
        offline=mode != "full",
    )


def host_problems(settings: Settings) -> list[Problem]:
    """What this host lacks for `serve` to start, beyond the config itself (check-config runs
    it; parsing does not, so a config can be validated for another host): a unix socket
    whose directory does not exist."""
    lines: dict[tuple[str, ...], int] = {}
    if settings.source:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = key_lines(Path(settings.source).read_text(encoding="utf-8"))
    problems = []
    for listen in settings.server.listen:
        folder = os.path.dirname(listen.path)
        if listen.kind == "unix" and not os.path.isdir(folder):
            problems.append(
                Problem(
                    "server.listen",
                    f"{listen}: the directory {folder} does not exist, so the socket cannot be "
                    "created: create it first (under systemd, the unit's RuntimeDirectory= "
                    "creates /run/pc-token-broker at each start)",
                    settings.source,
                    lines.get(("server", "listen")),
                )
            )
    return problems


def load_settings(
    path: str, env: Mapping[str, str] | None = None, *, mode: str = "full"
) -> Settings:
    try:
        text = read_bounded(path, CONFIG_LIMIT).decode("utf-8")
    except OSError as e:
        raise ConfigError([Problem("(file)", f"cannot read: {e.strerror or e}", path)]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("(file)", "not UTF-8 text", path)]) from None
    except ValueError as e:  # larger than CONFIG_LIMIT, or not a regular file
        raise ConfigError([Problem("(file)", f"cannot read: {e}", path)]) from None
    return parse_settings(text, file=path, env=env, mode=mode)
