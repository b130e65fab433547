"""TOML configuration → frozen, typed settings. All validation lives here.

Every problem is collected (not just the first) with its key path and, where the line scan finds
it, file and line. Unknown keys are errors. Secrets are read from `*_file` (with `${VAR}`
expansion, e.g. systemd's `$CREDENTIALS_DIRECTORY`) or `*_env`, held as `Secret`, never printed.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, Problem
from .listen import Listen, parse_listen
from .secret import Secret
from .tomlpos import key_lines

DEFAULT_PATH = "/etc/pc-token-broker/config.toml"
CREDENTIALS = (
    "client_secret",
    "certificate",
    "refresh_token",
    "federated_token_file",
    "static_token_file",
)
SECRET_FILE_LIMIT = 64 * 1024  # bytes; a secret file larger than this is a mistake
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[Listen, ...] = (Listen.tcp("127.0.0.1", 8721),)
    required_header: tuple[str, str] = ("Metadata", "true")
    allowed_hosts: frozenset[str] = frozenset({"localhost", "127.0.0.1", "[::1]"})
    log_format: str = "json"
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    name: str
    tenant_id: str
    client_id: str
    credential: str
    generatetoken_url: str
    authority: str
    scope: str
    refresh_ahead: float
    min_refresh_margin: float
    min_remaining: float
    upstream_timeout: float
    warm: bool
    client_secret: Secret | None = None
    secret_source: str = ""  # where the secret came from, for summaries: "file /x", "env X"

    @property
    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    enabled: bool = True
    upstream_base: str = "https://api.partnercenter.microsoft.com"
    max_entries: int = 10000
    min_remaining: float = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    profiles: Mapping[str, ProfileSettings]
    mirror: MirrorSettings
    source: str | None = None
    warnings: tuple[str, ...] = field(default=())


# Profile keys with their defaults ([defaults] and every profile may set any of them).
PROFILE_DEFAULTS: dict[str, Any] = {
    "generatetoken_url": "https://api.partnercenter.microsoft.com/v3/generatetoken",
    "authority": "https://login.microsoftonline.com",
    "scope": "https://api.partnercenter.microsoft.com/.default",
    "refresh_ahead": 0.25,
    "min_refresh_margin": 60,
    "min_remaining": 30,
    "upstream_timeout": 10,
    "warm": True,
    "credential": "client_secret",
}
_SECRET_KEYS = ("client_secret", "client_secret_file", "client_secret_env")
PROFILE_KEYS = frozenset({"tenant_id", "client_id", *PROFILE_DEFAULTS, *_SECRET_KEYS})
SERVER_KEYS = frozenset(ServerSettings.__dataclass_fields__)
MIRROR_KEYS = frozenset(MirrorSettings.__dataclass_fields__)
TOP_KEYS = frozenset({"server", "defaults", "profiles", "mirror"})


class _Reader:
    """Collects problems while reading one document; values come back typed or as None."""

    def __init__(
        self,
        file: str | None,
        lines: dict[tuple[str, ...], int],
        env: Mapping[str, str],
        base_dir: Path,
    ) -> None:
        self.file, self.lines, self.env, self.base_dir = file, lines, env, base_dir
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def problem(self, path: tuple[str, ...], message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):  # the key's own line, else its table's
            line = self.lines.get(path[:n])
            if line:
                break
        self.problems.append(Problem(".".join(path), message, self.file, line))

    def table(self, value: Any, path: tuple[str, ...], allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "must be a table")
            return {}
        for key in sorted(set(value) - allowed):
            self.problem((*path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def number(self, value: Any, path: tuple[str, ...], low: float, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"must be a number, not {type(value).__name__}")
            return None
        if not low <= value <= high:
            self.problem(path, f"must be between {low:g} and {high:g}, not {value:g}")
            return None
        return float(value)

    def string(
        self, value: Any, path: tuple[str, ...], *, choices: tuple[str, ...] = ()
    ) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(path, "must be a non-empty string")
            return None
        if choices and value not in choices:
            self.problem(path, f"must be one of {', '.join(choices)}, not {value!r}")
            return None
        return value

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, "must be true or false")
            return None
        return value

    def strings(self, value: Any, path: tuple[str, ...]) -> list[str] | None:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.problem(path, "must be a non-empty list of strings")
            return None
        return value

    def url(self, value: Any, path: tuple[str, ...]) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
            self.problem(path, f"must be an http(s) URL, not {text!r}")
            return None
        if text.startswith("http://") and not re.match(r"http://(127\.|localhost|\[::1\])", text):
            self.warnings.append(f"{'.'.join(path)}: plain http to a non-loopback host")
        return text

    def expand(self, value: str, path: tuple[str, ...]) -> Path | None:
        missing = [m for m in _VAR.findall(value) if m not in self.env]
        if missing:
            self.problem(path, f"environment variable {missing[0]} is not set")
            return None
        expanded = Path(_VAR.sub(lambda m: self.env[m.group(1)], value))
        return expanded if expanded.is_absolute() else self.base_dir / expanded

    def secret(
        self, table: dict[str, Any], path: tuple[str, ...], name: str, *, required: bool
    ) -> tuple[Secret | None, str]:
        """The secret `name` from exactly one of `name`, `name_file`, `name_env`."""
        given = [k for k in (name, f"{name}_file", f"{name}_env") if k in table]
        if len(given) > 1:
            self.problem((*path, given[1]), f"give only one of {', '.join(given)}")
            return None, ""
        if not given:
            if required:
                self.problem((*path, f"{name}_file"), f"required: {name}_file or {name}_env")
            return None, ""
        key = given[0]
        where = (*path, key)
        raw = self.string(table[key], where)
        if raw is None:
            return None, ""
        if key == name:
            self._inline_secret_readable(where)
            return Secret(raw), "inline"
        if key.endswith("_env"):
            if raw not in self.env or not self.env[raw].strip():
                self.problem(where, f"environment variable {raw} is not set or empty")
                return None, ""
            return Secret(self.env[raw].strip()), f"env {raw}"
        file = self.expand(raw, where)
        if file is None:
            return None, ""
        value = read_secret_file(file)
        if isinstance(value, Problem):
            self.problem(where, value.message)
            return None, ""
        return value, f"file {file}"

    def _inline_secret_readable(self, path: tuple[str, ...]) -> None:
        if self.file is None:
            return
        try:
            mode = os.stat(self.file).st_mode
        except OSError:
            return
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            self.warnings.append(
                f"{'.'.join(path)}: inline secret in {self.file}, which others can read "
                f"(mode {stat.S_IMODE(mode):04o}); use a *_file with mode 0600, or chmod 600"
            )


def read_secret_file(path: Path) -> Secret | Problem:
    """A secret from a file: stripped of surrounding whitespace, bounded, non-empty."""
    try:
        with open(path, "rb") as f:
            data = f.read(SECRET_FILE_LIMIT + 1)
    except OSError as e:
        return Problem("", f"cannot read {path}: {e.strerror or e.__class__.__name__}")
    if len(data) > SECRET_FILE_LIMIT:
        return Problem("", f"{path} is larger than {SECRET_FILE_LIMIT} bytes")
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return Problem("", f"{path} is empty")
    return Secret(text)


def _server(r: _Reader, data: dict[str, Any]) -> ServerSettings:
    t = r.table(data.get("server"), ("server",), SERVER_KEYS)
    d = ServerSettings()
    out: dict[str, Any] = {}
    if "listen" in t:
        items = r.strings(t["listen"], ("server", "listen"))
        parsed = []
        for i, item in enumerate(items or ()):
            try:
                parsed.append(parse_listen(item))
            except ValueError as e:
                r.problem(("server", "listen"), f"entry {i + 1} ({item!r}): {e}")
        out["listen"] = tuple(parsed) or d.listen
    if "required_header" in t:
        text = r.string(t["required_header"], ("server", "required_header")) or ""
        name, sep, value = text.partition(":")
        if text and (not sep or not _HEADER_NAME.fullmatch(name.strip()) or not value.strip()):
            r.problem(("server", "required_header"), f"must look like 'Name: value', not {text!r}")
        elif text:
            out["required_header"] = (name.strip(), value.strip())
    if "allowed_hosts" in t:
        hosts = r.strings(t["allowed_hosts"], ("server", "allowed_hosts"))
        out["allowed_hosts"] = frozenset(h.lower() for h in hosts or ()) or d.allowed_hosts
    if "log_format" in t:
        out["log_format"] = (
            r.string(t["log_format"], ("server", "log_format"), choices=("json", "console"))
            or d.log_format
        )
    if "log_level" in t:
        out["log_level"] = (
            r.string(
                t["log_level"],
                ("server", "log_level"),
                choices=("debug", "info", "warning", "error"),
            )
            or d.log_level
        )
    return ServerSettings(**{**{k: getattr(d, k) for k in SERVER_KEYS}, **out})


def _profile(
    r: _Reader, name: str, merged: dict[str, Any], path: tuple[str, ...]
) -> ProfileSettings | None:
    before = len(r.problems)
    if not _NAME.fullmatch(name):
        r.problem(path, "profile names are letters, digits, '_', '.', '-' (at most 64)")

    def at(key: str) -> tuple[str, ...]:
        # Report a key where it was written: in the profile, else in [defaults].
        return (*path, key) if (*path, key) in r.lines else ("defaults", key)

    v: dict[str, Any] = {}
    credential = r.string(merged.get("credential"), at("credential"), choices=CREDENTIALS)
    for key in ("tenant_id", "client_id"):
        if key not in merged:
            r.problem((*path, key), "required")
        else:
            v[key] = r.string(merged[key], at(key))
    for key in ("generatetoken_url", "authority"):
        v[key] = r.url(merged[key], at(key))
    v["scope"] = r.string(merged["scope"], at("scope"))
    v["refresh_ahead"] = r.number(merged["refresh_ahead"], at("refresh_ahead"), 0, 0.5)
    v["min_refresh_margin"] = r.number(
        merged["min_refresh_margin"], at("min_refresh_margin"), 0, 86400
    )
    v["min_remaining"] = r.number(merged["min_remaining"], at("min_remaining"), 0, 3600)
    v["upstream_timeout"] = r.number(merged["upstream_timeout"], at("upstream_timeout"), 0.1, 300)
    v["warm"] = r.boolean(merged["warm"], at("warm"))
    secret, source = r.secret(merged, path, "client_secret", required=credential == "client_secret")
    if credential not in (None, "client_secret"):
        r.problem(at("credential"), f"credential {credential!r} is not supported by this build")
    if len(r.problems) > before:
        return None
    return ProfileSettings(
        name=name, credential=credential or "", client_secret=secret, secret_source=source, **v
    )


def parse_settings(
    text: str,
    *,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Validate a TOML document. Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    base = base_dir or (Path(file).resolve().parent if file else Path.cwd())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r"\(at line (\d+)", str(e))  # 3.11 has no e.lineno
        line = int(at.group(1)) if at else None
        raise ConfigError([Problem("(syntax)", str(e).split(" (at")[0], file, line)]) from None
    r = _Reader(file, key_lines(text), env, base)
    r.table(data, (), TOP_KEYS)
    server = _server(r, data)
    defaults = r.table(data.get("defaults"), ("defaults",), PROFILE_KEYS)
    profiles_table = r.table(
        data.get("profiles"), ("profiles",), frozenset(data.get("profiles") or ())
    )
    profiles: dict[str, ProfileSettings] = {}
    for name, raw in profiles_table.items():
        own = r.table(raw, ("profiles", name), PROFILE_KEYS)
        merged = {**PROFILE_DEFAULTS, **defaults, **own}
        profile = _profile(r, name, merged, ("profiles", name))
        if profile is not None:
            profiles[name] = profile
    mirror = _mirror(r, data)
    if r.problems:
        raise ConfigError(r.problems)
    return Settings(
        server=server,
        profiles=MappingProxyType(profiles),
        mirror=mirror,
        source=file,
        warnings=tuple(r.warnings),
    )


def _mirror(r: _Reader, data: dict[str, Any]) -> MirrorSettings:
    t = r.table(data.get("mirror"), ("mirror",), MIRROR_KEYS)
    d = MirrorSettings()
    out: dict[str, Any] = {}
    if "enabled" in t:
        out["enabled"] = r.boolean(t["enabled"], ("mirror", "enabled"))
    if "upstream_base" in t:
        out["upstream_base"] = r.url(t["upstream_base"], ("mirror", "upstream_base"))
    if "max_entries" in t:
        n = r.number(t["max_entries"], ("mirror", "max_entries"), 1, 10_000_000)
        if n is not None and n != int(n):
            r.problem(("mirror", "max_entries"), "must be a whole number")
        out["max_entries"] = int(n) if n else None
    if "min_remaining" in t:
        out["min_remaining"] = r.number(t["min_remaining"], ("mirror", "min_remaining"), 0, 3600)
    return MirrorSettings(
        **{k: getattr(d, k) if out.get(k) is None else out[k] for k in MIRROR_KEYS}
    )


def resolve_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> str:
    """The config path: --config, else $PC_TOKEN_BROKER_CONFIG, else the system default."""
    env = os.environ if env is None else env
    return cli_value or env.get("PC_TOKEN_BROKER_CONFIG") or DEFAULT_PATH


def load_settings(path: str, env: Mapping[str, str] | None = None) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem("(file)", f"cannot read: {e.strerror or e}", path)]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem("(file)", "not UTF-8 text", path)]) from None
    return parse_settings(text, file=path, env=env)
