"""TOML configuration → frozen, typed settings. All validation lives here.

Every problem is collected (not just the first) with its key path and, where the line scan finds
it, file and line. Unknown keys are errors. Secrets are read from `*_file` (with `${VAR}`
expansion, e.g. systemd's `$CREDENTIALS_DIRECTORY`) or `*_env`, held as `Secret`, never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from broker.config.clouds import CLOUDS, cloud_keys
from broker.config.credentials import CREDENTIAL_KEYS, CREDENTIALS, credential_fields
from broker.config.errors import ConfigError, Problem
from broker.config.files import read_bounded
from broker.config.read import Reader
from broker.config.sections import read_mirror, read_msi, read_server, read_shared
from broker.config.settings import (
    ProfileSettings,
    Settings,
)
from broker.config.tomlpos import key_lines

DEFAULT_PATH = "/etc/pc-token-broker/config.toml"
TYPICAL_LIFETIME = 3600.0  # s: Azure AD's shortest usual token life, and Partner Center's
CONFIG_LIMIT = 1 << 20  # bytes: a config is a few KiB; a huge one would stall a reload
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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
    "cloud": "public",  # sets authority, generatetoken_url and scope together (clouds.py)
    "allow_insecure_upstream": False,
}
ACCESS_KEYS = frozenset(
    {"allowed_uids", "allowed_gids", "access_key", "access_key_file", "access_key_env"}
)
MSI_SELECTORS = frozenset({"object_id", "resource_id"})
CUSTOMER_KEYS = frozenset(
    {"customer_tenants", "customer_scopes", "max_customer_tokens", "upstream_concurrency"}
)
PROFILE_KEYS = frozenset(
    {"tenant_id", "client_id", *PROFILE_DEFAULTS, *ACCESS_KEYS, *MSI_SELECTORS, *CUSTOMER_KEYS}
).union(*CREDENTIAL_KEYS.values())
TOP_KEYS = frozenset({"server", "defaults", "profiles", "mirror", "msi", "shared"})


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
    insecure = r.boolean(merged["allow_insecure_upstream"], at("allow_insecure_upstream"))
    v["allow_insecure_upstream"] = bool(insecure)
    for key in ("generatetoken_url", "authority"):
        v[key] = r.url(merged[key], at(key), allow_insecure=bool(insecure))
    v["scope"] = r.string(merged["scope"], at("scope"))
    v["cloud"] = r.string(merged["cloud"], at("cloud"), choices=tuple(CLOUDS))
    v["refresh_ahead"] = r.number(merged["refresh_ahead"], at("refresh_ahead"), 0, 0.5)
    v["min_refresh_margin"] = r.number(
        merged["min_refresh_margin"], at("min_refresh_margin"), 0, 86400
    )
    v["min_remaining"] = r.number(merged["min_remaining"], at("min_remaining"), 0, 3600)
    if v["min_remaining"] is not None and v["min_remaining"] > TYPICAL_LIFETIME / 2:
        warning = (
            f"{'.'.join(at('min_remaining'))}: {v['min_remaining']:g} s leaves less than half "
            f"of a typical token servable (Azure AD and Partner Center tokens live about "
            f"{TYPICAL_LIFETIME:g} s); a token that lives less than min_remaining can never be "
            "served and counts as a failure"
        )
        if warning not in r.warnings:
            r.warnings.append(warning)
    v["upstream_timeout"] = r.number(merged["upstream_timeout"], at("upstream_timeout"), 0.1, 300)
    v["warm"] = r.boolean(merged["warm"], at("warm"))
    if credential is not None:
        v.update(credential_fields(r, credential, merged, own, path, at))
    for key, lookup in (("allowed_uids", "user"), ("allowed_gids", "group")):
        if key in merged:
            v[key] = tuple(r.ids(merged[key], at(key), lookup))
    v["access_key"], _ = r.secret(merged, path, "access_key", required=False)
    for key in MSI_SELECTORS:
        if key in merged:
            v[key] = r.string(merged[key], at(key))
    v.update(_customers(r, credential, merged, path, at))
    if len(r.problems) > before:
        return None
    return ProfileSettings(name=name, credential=credential or "", **v)


MODES = ("full", "offline", "msi")


def _shared_client_ids(r: Reader, profiles: dict[str, ProfileSettings]) -> None:
    """Two profiles with one client_id are legal (one app, two tenants or scopes), but an Azure
    SDK that names the identity by client_id cannot tell them apart: say so."""
    by_id: dict[str, list[str]] = {}
    for name, p in profiles.items():
        if p.client_id:
            by_id.setdefault(p.client_id.lower(), []).append(name)
    for client_id, names in by_id.items():
        if len(names) > 1:
            r.warnings.append(
                f"profiles {', '.join(names)} share client_id {client_id}: /msi callers that "
                "select by client_id get a 400; give each an object_id or resource_id to "
                "select by"
            )


def _customers(
    r: Reader, credential: str | None, merged: dict[str, Any], path: tuple[str, ...], at: Any
) -> dict:
    """customer_tenants, customer_scopes, max_customer_tokens, upstream_concurrency."""
    v: dict[str, Any] = {}
    if "max_customer_tokens" in merged:
        v["max_customer_tokens"] = r.whole(
            merged["max_customer_tokens"], at("max_customer_tokens"), 1, 10_000_000
        )
    if "upstream_concurrency" in merged:
        v["upstream_concurrency"] = r.whole(
            merged["upstream_concurrency"], at("upstream_concurrency"), 1, 1024
        )
    if "customer_tenants" not in merged:
        if "customer_scopes" in merged:
            r.problem(at("customer_scopes"), "needs customer_tenants (the feature is off)")
        return {k: x for k, x in v.items() if x is not None}
    tenants = r.strings(merged["customer_tenants"], at("customer_tenants")) or []
    if "*" in tenants and len(tenants) > 1:
        r.problem(at("customer_tenants"), '"*" (any tenant) stands alone')
    for tenant in tenants:
        if tenant != "*" and not is_tenant(tenant):
            r.problem(at("customer_tenants"), f"{tenant[:80]!r} is not a tenant id or domain")
    if "customer_scopes" not in merged:
        r.problem((*path, "customer_scopes"), "required with customer_tenants")
    scopes = r.strings(merged.get("customer_scopes", ["x"]), at("customer_scopes")) or []
    for scope in scopes:
        if not _SCOPE.fullmatch(scope):
            r.problem(at("customer_scopes"), f"{scope[:80]!r} is not a scope (one, no spaces)")
    if credential == "static_token_file":
        r.problem(
            at("customer_tenants"),
            "a static token file cannot be used for customer tenants: "
            "use refresh_token, client_secret, certificate or federated_token_file",
        )
    v["customer_tenants"] = tuple(t.lower() for t in tenants)
    v["customer_scopes"] = tuple(scopes)
    return {k: x for k, x in v.items() if x is not None}


# A customer tenant: its GUID or one of its domains. Never "common", "organizations" or
# "consumers" (they are not tenants: Azure AD would pick the user's home tenant).
_TENANT = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]",
)
_SCOPE = re.compile(r"[\x21-\x7e]{1,512}")


def is_tenant(text: str) -> bool:
    """Whether `text` names a tenant (a GUID or a domain name, any case, at most 253 chars)."""
    return len(text) <= 253 and _TENANT.fullmatch(text.lower()) is not None


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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r"\(at line (\d+)", str(e))  # 3.11 has no e.lineno
        line = int(at.group(1)) if at else None
        raise ConfigError([Problem("(syntax)", str(e).split(" (at")[0], file, line)]) from None
    if not data:
        raise ConfigError(
            [Problem("(file)", "no settings: the file is empty or only comments", file)]
        )
    r = Reader(file, key_lines(text), env, base)
    r.table(data, (), TOP_KEYS)
    r.offline = mode != "full"  # "msi": only [msi] is read in full, below
    server = read_server(r, data)
    defaults = r.table(data.get("defaults"), ("defaults",), PROFILE_KEYS)
    profiles_table = r.table(
        data.get("profiles"), ("profiles",), frozenset(data.get("profiles") or ())
    )
    profiles: dict[str, ProfileSettings] = {}
    for name, raw in profiles_table.items():
        own = r.table(raw, ("profiles", name), PROFILE_KEYS)
        # Explicit keys win over a cloud's; a profile's cloud over what [defaults] set.
        merged = {
            **PROFILE_DEFAULTS,
            **cloud_keys(defaults.get("cloud")),
            **defaults,
            **cloud_keys(own.get("cloud")),
            **own,
        }
        profile = _profile(r, name, merged, own, ("profiles", name))
        if profile is not None:
            profiles[name] = profile
    _shared_client_ids(r, profiles)
    mirror = read_mirror(r, data)
    name, own_mirror = defaults.get("cloud"), data.get("mirror")
    cloud = CLOUDS.get(name) if isinstance(name, str) else None
    if cloud and not (isinstance(own_mirror, dict) and "upstream_base" in own_mirror):
        mirror = replace(mirror, upstream_base=cloud["mirror_upstream_base"])  # follows [defaults]
    r.offline = mode == "offline"
    msi = read_msi(r, data, profiles)
    r.offline = mode != "full"
    shared = read_shared(r, data)
    if r.problems:
        # In the order of the file, as an editor shows it; problems with no line go last.
        raise ConfigError(sorted(r.problems, key=lambda p: (p.line is None, p.line or 0)))
    return Settings(
        server=server,
        profiles=MappingProxyType(profiles),
        mirror=mirror,
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


def resolve_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> str:
    """The config path: --config, else $PC_TOKEN_BROKER_CONFIG, else the system default."""
    env = os.environ if env is None else env
    return cli_value or env.get("PC_TOKEN_BROKER_CONFIG") or DEFAULT_PATH


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
