"""The schema, read back: every key with its type, default, meaning and whether a reload applies
it (`keys()`, for the docs and their tests), and which settings only a restart changes
(`restart_needed()`, for the reload)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from broker.config.fields import Reload
from broker.config.profile_schema import CREDENTIAL_KEYS, ProfileKeys
from broker.config.schema import SECTIONS, ConfigFile
from broker.config.settings import Settings

PROFILE_PATH = "profiles.<name>"  # profile keys: also settable in [defaults]


@dataclass(frozen=True, slots=True)
class Key:
    path: str  # "server.listen", "profiles.<name>.min_remaining", "shared.redis_url"
    type: str  # in TOML's words: "string", "number", "list of strings", "one of: json, console"
    default: Any  # as TOML writes it (lists as lists); None: no default (unset, or required)
    required: bool  # within its table ([msi] and [shared] are optional tables)
    meaning: str
    reload: Reload  # "live": a SIGHUP applies it; "restart": only a restart does
    minimum: float | None = None
    maximum: float | None = None
    credentials: tuple[str, ...] = ()  # a profile key of these credentials only; (): any


def _type(prop: dict[str, Any]) -> str:
    """A JSON-schema property in TOML's words."""
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    if len(options) > 1:
        return " or ".join(_type(p) for p in options)
    one = options[0]
    if "enum" in one:
        return "one of: " + ", ".join(str(v) for v in one["enum"])
    if one.get("type") == "array":
        return "list of " + " or ".join(f"{t}s" for t in _type(one.get("items", {})).split(" or "))
    if one.get("writeOnly"):
        return "string (a secret)"
    return str(one.get("type", "value"))


def _keys(model: type[BaseModel], table: str) -> list[Key]:
    properties = model.model_json_schema()["properties"]
    section_of = {k: kind for kind, keys in CREDENTIAL_KEYS.items() for k in keys}
    out = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = None if field.default is PydanticUndefined else field.default
        prop = properties[name].get("anyOf", [properties[name]])[0]  # bounds: not on null
        kinds = tuple(k for k, keys in CREDENTIAL_KEYS.items() if name in keys)
        out.append(
            Key(
                path=f"{table}.{name}",
                type=_type(properties[name]),
                default=list(default) if isinstance(default, tuple) else default,
                required=field.is_required(),
                meaning=field.description or "",
                reload="restart" if extra.get("reload") == "restart" else "live",
                minimum=prop.get("minimum"),
                maximum=prop.get("maximum"),
                credentials=kinds if name in section_of else (),
            )
        )
    return out


def keys() -> list[Key]:
    """Every key the configuration file accepts, table by table, in the schema's order."""
    out = []
    for table in ConfigFile.model_fields:
        if table == "defaults":
            continue  # the profile keys, listed once under profiles.<name>
        if table == "profiles":
            out += _keys(ProfileKeys, PROFILE_PATH)
        else:
            out += _keys(SECTIONS[table], table)
    return out


def json_schema() -> dict[str, Any]:
    """The file's JSON Schema (for editors that validate TOML with one, such as Taplo)."""
    return ConfigFile.model_json_schema()


def _restart_only() -> list[tuple[str, tuple[str, ...], bool]]:
    """(table, the settings attributes only a restart changes, whether the table is compared
    whole: a table whose every key needs a restart is one thing, reported by its name)."""
    out = []
    for table, model in SECTIONS.items():
        attributes = []
        for name, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if extra.get("reload") == "restart":
                attributes.append(str(extra.get("attribute", name)))
        if attributes:
            out.append((table, tuple(attributes), len(attributes) == len(model.model_fields)))
    return out


_RESTART_ONLY = _restart_only()
# Every name restart_needed() can return, in order: [server] attributes, then whole tables.
RESTART_NAMES: tuple[str, ...] = tuple(
    name
    for table, attributes, whole in _RESTART_ONLY
    for name in ((table,) if whole else attributes)
)


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The settings that differ between `old` (what the process runs) and `new` and that only a
    restart applies: [server] attributes by name ("listen", "upstream_proxy_credentials"), and
    "shared" for the [shared] table, whose keys all need one."""
    names = []
    for table, attributes, whole in _RESTART_ONLY:
        before, after = getattr(old, table), getattr(new, table)
        if whole:
            if before != after:
                names.append(table)
            continue
        names += [a for a in attributes if getattr(before, a) != getattr(after, a)]
    return names
