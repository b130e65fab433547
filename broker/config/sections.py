"""Readers for the [server], [mirror] and [msi] tables (profiles are read in `config.py`)."""

from __future__ import annotations

import importlib.util
import re
import urllib.parse
from typing import Any

from broker.config.listen import parse_listen
from broker.config.read import Reader
from broker.config.settings import MirrorSettings, MsiSettings, ProfileSettings, ServerSettings

SERVER_FIELDS = frozenset(ServerSettings.__dataclass_fields__)
# The proxy's credentials come from a file only: never inline in the config, never in the URL.
SERVER_KEYS = (SERVER_FIELDS - {"upstream_proxy_credentials"}) | {"upstream_proxy_credentials_file"}
MIRROR_KEYS = frozenset(MirrorSettings.__dataclass_fields__)
MSI_KEYS = frozenset(
    {
        "profile",
        "identity_header_file",
        "identity_header_env",
        "generated_header_file",
        "min_remaining",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def read_server(r: Reader, data: dict[str, Any]) -> ServerSettings:
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
        "event_loop": ("auto", "asyncio", "uvloop"),
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
    _read_proxy(r, t, out)
    server = ServerSettings(
        **{k: getattr(d, k) if out.get(k) is None else out[k] for k in SERVER_FIELDS}
    )
    if server.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        r.problem(at("event_loop"), "uvloop is not installed: pip install 'pc-token-broker[speed]'")
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


def _read_proxy(r: Reader, t: dict[str, Any], out: dict[str, Any]) -> None:
    """[server] upstream_proxy (an http:// URL without credentials) and the file holding its
    "user:password"."""
    at = ("server", "upstream_proxy")
    if "upstream_proxy" in t:
        text = r.string(t["upstream_proxy"], at)
        parts = urllib.parse.urlsplit(text) if text else None
        if parts is None:
            pass
        elif parts.username is not None or parts.password is not None:
            r.problem(
                at,
                "no credentials in the URL: put user:password in a file named by "
                "server.upstream_proxy_credentials_file",
            )
        elif parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            r.problem(at, "must look like http://HOST:PORT (a forward proxy)")
        else:
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                r.problem(at, "must look like http://HOST:PORT (a forward proxy)")
            else:
                out["upstream_proxy"] = text
    if "upstream_proxy_credentials_file" in t:
        where = ("server", "upstream_proxy_credentials_file")
        secret, _ = r.secret(t, ("server",), "upstream_proxy_credentials", required=False)
        if secret is not None and ":" not in secret.reveal():
            r.problem(where, "the file must hold user:password")
        elif secret is not None:
            out["upstream_proxy_credentials"] = secret
        if "upstream_proxy" not in t:
            r.problem(where, "set server.upstream_proxy too (credentials for which proxy?)")


def read_mirror(r: Reader, data: dict[str, Any]) -> MirrorSettings:
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


def read_msi(
    r: Reader, data: dict[str, Any], profiles: dict[str, ProfileSettings]
) -> MsiSettings | None:
    if "msi" not in data:
        return None
    t = r.table(data["msi"], ("msi",), MSI_KEYS)
    d = MsiSettings()
    profile = r.string(t.get("profile", d.profile), ("msi", "profile")) or d.profile
    if profile not in profiles and not r.problems:
        r.problem(("msi", "profile"), f"no profile named {profile!r}")
    header, _ = r.secret(t, ("msi",), "identity_header", required=False)
    generated = None
    if "generated_header_file" in t:
        text = r.string(t["generated_header_file"], ("msi", "generated_header_file"))
        path = r.expand(text, ("msi", "generated_header_file")) if text else None
        generated = str(path) if path else None
    if (header is None) == (generated is None) and not r.problems:
        r.problem(
            ("msi", "identity_header_file"),
            "give the identity header (identity_header_file or _env) or where to write a "
            "generated one (generated_header_file), not both",
        )
    minimum = d.min_remaining
    if "min_remaining" in t:
        minimum = r.number(t["min_remaining"], ("msi", "min_remaining"), 0, 3600) or minimum
    return MsiSettings(
        profile=profile,
        identity_header=header,
        generated_header_file=generated,
        min_remaining=minimum,
    )
