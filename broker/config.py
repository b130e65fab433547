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
    allow_remote: bool = False  # binding a non-loopback address must be asked for
    socket_mode: int = 0o660  # unix sockets: never world-accessible whatever is asked
    socket_group: int | None = None  # unix sockets: group (gid, from a name or number)
    max_connections: int = 256
    read_timeout: float = 10.0  # s to receive a request's head (and a mirror body)
    max_header_bytes: int = 8192  # request line and headers together
    audit: bool = True  # one line per token handed out
    refresh_min_interval: float = 10.0  # s between forced refreshes of one profile
    shutdown_timeout: float = 10.0  # s in-flight requests get to finish after SIGTERM


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
    allowed_uids: tuple[int, ...] = ()  # unix-socket callers allowed (empty: any)
    allowed_gids: tuple[int, ...] = ()
    access_key: Secret | None = None  # callers must send it as X-Broker-Key

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
ACCESS_KEYS = frozenset(
    {"allowed_uids", "allowed_gids", "access_key", "access_key_file", "access_key_env"}
)
PROFILE_KEYS = frozenset({"tenant_id", "client_id", *PROFILE_DEFAULTS, *ACCESS_KEYS}).union(
    *CREDENTIAL_KEYS.values()
)
SERVER_KEYS = frozenset(ServerSettings.__dataclass_fields__)
MIRROR_KEYS = frozenset(MirrorSettings.__dataclass_fields__)
TOP_KEYS = frozenset({"server", "defaults", "profiles", "mirror"})


def _server(r: Reader, data: dict[str, Any]) -> ServerSettings:
    t = r.table(data.get("server"), ("server",), SERVER_KEYS)
    d = ServerSettings()
    out: dict[str, Any] = {}

    def at(key: str) -> tuple[str, ...]:
        return ("server", key)

    if "listen" in t:
        parsed = []
        for i, item in enumerate(r.strings(t["listen"], at("listen")) or ()):
            try:
                parsed.append(parse_listen(item))
            except ValueError as e:
                r.problem(at("listen"), f"entry {i + 1} ({item!r}): {e}")
        out["listen"] = tuple(parsed) or None
    if "required_header" in t:
        text = r.string(t["required_header"], at("required_header")) or ""
        name, sep, value = text.partition(":")
        if text and (not sep or not _HEADER_NAME.fullmatch(name.strip()) or not value.strip()):
            r.problem(at("required_header"), f"must look like 'Name: value', not {text!r}")
        elif text:
            out["required_header"] = (name.strip(), value.strip())
    if "allowed_hosts" in t:
        hosts = r.strings(t["allowed_hosts"], at("allowed_hosts"))
        out["allowed_hosts"] = frozenset(h.lower() for h in hosts) if hosts else None
    choices = {
        "log_format": ("json", "console"),
        "log_level": ("debug", "info", "warning", "error"),
    }
    for key, allowed in choices.items():
        if key in t:
            out[key] = r.string(t[key], at(key), choices=allowed)
    for key in ("allow_remote", "audit"):
        if key in t:
            out[key] = r.boolean(t[key], at(key))
    for key, low, high in (("max_connections", 1, 1_000_000), ("max_header_bytes", 1024, 1 << 20)):
        if key in t:
            out[key] = r.whole(t[key], at(key), low, high)
    for key, low, high in (
        ("read_timeout", 0.1, 600),
        ("refresh_min_interval", 0, 3600),
        ("shutdown_timeout", 0, 600),
    ):
        if key in t:
            out[key] = r.number(t[key], at(key), low, high)
    if "socket_mode" in t:
        out["socket_mode"] = r.mode(t["socket_mode"], at("socket_mode"))
    if "socket_group" in t:
        ids = r.ids([t["socket_group"]], at("socket_group"), "group")
        out["socket_group"] = ids[0] if ids else None
    server = ServerSettings(
        **{k: getattr(d, k) if out.get(k) is None else out[k] for k in SERVER_KEYS}
    )
    for listen in server.listen:
        if not listen.is_loopback and not server.allow_remote:
            r.problem(
                at("listen"),
                f"{listen} is not a loopback address: anything that can reach "
                "it could act as the partner; set server.allow_remote = true "
                "to allow it",
            )
        elif not listen.is_loopback:
            r.warnings.append(f"server.listen: {listen} is reachable from other hosts")
    return server


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
    for key, lookup in (("allowed_uids", "user"), ("allowed_gids", "group")):
        if key in merged:
            v[key] = tuple(r.ids(merged[key], at(key), lookup))
    v["access_key"], _ = r.secret(merged, path, "access_key", required=False)
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
        out["max_entries"] = r.whole(t["max_entries"], ("mirror", "max_entries"), 1, 10_000_000)
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
