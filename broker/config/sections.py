"""Readers for the [server], [mirror], [msi] and [shared] tables (profiles: `load.py`)."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import urllib.parse
from pathlib import Path
from typing import Any

from broker.config.errors import Problem
from broker.config.listen import parse_listen
from broker.config.read import Reader, read_secret_file
from broker.config.secret import Secret, UnreadSecret
from broker.config.settings import (
    MirrorSettings,
    MsiSettings,
    ProfileSettings,
    ServerSettings,
    SharedSettings,
)

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
_PROXY_URL = re.compile(
    r"http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?|http://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?"
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
    if r.offline:
        pass
    elif server.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
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
        elif not _PROXY_URL.fullmatch(text) or not parts.hostname:
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
        unread = isinstance(secret, UnreadSecret)  # offline: not looked at
        if secret is not None and not unread and ":" not in secret.reveal():
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
    if "allow_insecure_upstream" in t:
        out["allow_insecure_upstream"] = r.boolean(
            t["allow_insecure_upstream"], ("mirror", "allow_insecure_upstream")
        )
    if "upstream_base" in t:
        out["upstream_base"] = r.url(
            t["upstream_base"],
            ("mirror", "upstream_base"),
            allow_insecure=bool(out.get("allow_insecure_upstream")),
        )
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
    header, header_source = r.secret(t, ("msi",), "identity_header", required=False)
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
        header_source=header_source,
    )


SHARED_KEYS = frozenset(
    {"redis_url", "password_file", "key_file", "prefix", "lock_timeout", "timeout"}
)
SHARED_KEY_BYTES = 32  # AES-256
_REDIS_URL = re.compile(r"(rediss?://[^\s/?#]+(/\d{1,2})?|unix:///[^\s?#]+)(\?[^\s#]*)?")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def read_shared(r: Reader, data: dict[str, Any]) -> SharedSettings | None:
    """[shared]: the Redis every broker of a fleet names. The key comes from a file only (32
    raw bytes, not readable by others); a password from a file only, never inline."""
    if "shared" not in data:
        return None
    t = r.table(data["shared"], ("shared",), SHARED_KEYS)

    def at(key: str) -> tuple[str, ...]:
        return ("shared", key)

    before = len(r.problems)
    url = None
    if "redis_url" not in t:
        r.problem(at("redis_url"), "required, e.g. redis://127.0.0.1:6379/0")
    else:
        url = r.string(t["redis_url"], at("redis_url"))
        if url is not None and not _REDIS_URL.fullmatch(url):
            r.problem(
                at("redis_url"),
                "must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or "
                "unix:///PATH (credentials go in password_file, not in the URL)",
            )
        elif url is not None and "@" in url.split("?")[0]:
            r.problem(at("redis_url"), "put the password in password_file, not in the URL")
    key, key_file = None, ""
    if "key_file" not in t:
        r.problem(at("key_file"), "required: a file of 32 random bytes, the same on every broker")
    else:
        text = r.string(t["key_file"], at("key_file"))
        path = r.expand(text, at("key_file")) if text else None
        if path is not None and r.offline:
            key_file, key = str(path), UnreadSecret()
        elif path is not None:
            key_file = str(path)
            raw = _read_key(r, path, at("key_file"))
            key = Secret(raw.hex()) if raw is not None else None
    password = username = password_file = None
    if "password_file" in t:
        text = r.string(t["password_file"], at("password_file"))
        path = r.expand(text, at("password_file")) if text else None
        if path is not None and r.offline:
            password_file, password = str(path), UnreadSecret()
        elif path is not None:
            value = read_secret_file(path)
            if isinstance(value, Problem):
                r.problem(at("password_file"), value.message)
            else:
                password_file = str(path)
                user, sep, rest = value.reveal().partition(":")
                if sep and user and rest and " " not in user:
                    username, password = user, Secret(rest)
                else:
                    password = value
    out: dict[str, Any] = {}
    if "prefix" in t:
        prefix = r.string(t["prefix"], at("prefix"))
        if prefix is not None and not _PREFIX.fullmatch(prefix):
            r.problem(at("prefix"), "letters, digits, '_', '.', ':', '-' (at most 64)")
        elif prefix is not None:
            out["prefix"] = prefix
    if "lock_timeout" in t:
        out["lock_timeout"] = r.number(t["lock_timeout"], at("lock_timeout"), 1, 600)
    if "timeout" in t:
        out["timeout"] = r.number(t["timeout"], at("timeout"), 0.01, 30)
    if len(r.problems) > before or url is None or key is None:
        return None
    return SharedSettings(
        redis_url=url,
        key=key,
        key_file=key_file,
        password=password,
        username=username,
        password_file=password_file,
        **{k: v for k, v in out.items() if v is not None},
    )


def _read_key(r: Reader, path: Path, where: tuple[str, ...]) -> bytes | None:
    """Exactly 32 bytes, from a file others cannot read (the key decrypts every token)."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(SHARED_KEY_BYTES + 1)
    except OSError as e:
        r.problem(where, f"cannot read {path}: {e.strerror or e.__class__.__name__}")
        return None
    if mode & stat.S_IROTH:
        mode_text = f"{stat.S_IMODE(mode):04o}"
        r.problem(where, f"{path} is readable by every user (mode {mode_text}): chmod 600")
        return None
    if len(raw) != SHARED_KEY_BYTES:
        got = "more" if len(raw) > SHARED_KEY_BYTES else str(len(raw))
        r.problem(
            where,
            f"must hold exactly {SHARED_KEY_BYTES} bytes, not {got} "
            f"(make one: head -c 32 /dev/urandom > {path})",
        )
        return None
    return raw
