"""TOML configuration → frozen, typed settings. All validation lives here.

Every problem is collected (not just the first) with its key path and, where the line scan finds
it, file and line. Unknown keys are errors. Secrets are read from `*_file` (with `${VAR}`
expansion, e.g. systemd's `$CREDENTIALS_DIRECTORY`) or `*_env`, held as `Secret`, never printed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config_credentials import CREDENTIAL_KEYS, CREDENTIALS, credential_fields
from .config_read import Reader
from .errors import ConfigError, Problem
from .listen import Listen, parse_listen
from .secret import Secret
from .tomlpos import key_lines

DEFAULT_PATH = "/etc/pc-token-broker/config.toml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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
    secret_source: str = ""  # where the credential comes from, for summaries: "file /x", "env X"
    certificate_pem: Secret | None = None  # key + certificate, validated at load
    certificate_password: Secret | None = None
    signing_algorithm: str = "RS256"
    refresh_token_file: str | None = None  # read at each refresh, rotated token written back
    federated_token_file: str | None = None  # re-read at each refresh (it rotates)
    static_token_file: str | None = None  # an AAD token placed by another system

    @property
    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    enabled: bool = True
    upstream_base: str = "https://api.partnercenter.microsoft.com"
    max_entries: int = 10000
    min_remaining: float = 30.0
    upstream_timeout: float = 10.0


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
PROFILE_KEYS = frozenset({"tenant_id", "client_id", *PROFILE_DEFAULTS}).union(
    *CREDENTIAL_KEYS.values()
)
SERVER_KEYS = frozenset(ServerSettings.__dataclass_fields__)
MIRROR_KEYS = frozenset(MirrorSettings.__dataclass_fields__)
TOP_KEYS = frozenset({"server", "defaults", "profiles", "mirror"})


def _server(r: Reader, data: dict[str, Any]) -> ServerSettings:
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
    r: Reader, name: str, merged: dict[str, Any], own: dict[str, Any], path: tuple[str, ...]
) -> ProfileSettings | None:
    before = len(r.problems)
    if not _NAME.fullmatch(name):
        r.problem(path, "profile names are letters, digits, '_', '.', '-' (at most 64)")

    def at(key: str) -> tuple[str, ...]:
        # Report a key where it was written: in the profile, else in [defaults].
        return (*path, key) if key in own else ("defaults", key)

    v: dict[str, Any] = {}
    credential = r.string(merged.get("credential"), at("credential"), choices=CREDENTIALS)
    # A static token needs no app registration of ours: tenant and client are informational.
    for key in ("tenant_id", "client_id"):
        if key in merged:
            v[key] = r.string(merged[key], at(key))
        elif credential == "static_token_file":
            v[key] = ""
        else:
            r.problem((*path, key), "required")
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
    if credential is not None:
        v.update(credential_fields(r, credential, merged, own, path, at))
    if len(r.problems) > before:
        return None
    return ProfileSettings(name=name, credential=credential or "", **v)


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
    r = Reader(file, key_lines(text), env, base)
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
        profile = _profile(r, name, merged, own, ("profiles", name))
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


def _mirror(r: Reader, data: dict[str, Any]) -> MirrorSettings:
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
    if "upstream_timeout" in t:
        out["upstream_timeout"] = r.number(
            t["upstream_timeout"], ("mirror", "upstream_timeout"), 0.1, 300
        )
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
