"""[server], [mirror], [msi] and [shared] → their settings (profiles: `profiles.py`).

Each reader gets its table as the schema validated it (`schema.py`; keys that failed are back at
their defaults, so the checks across keys still run) and adds what needs the host or the
environment: secrets, names, files, and the checks across keys.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

from broker.config.clouds import CLOUDS
from broker.config.errors import Problem
from broker.config.read import Reader, read_secret_file
from broker.config.schema import MirrorSection, MsiSection, ServerSection, SharedSection
from broker.config.secret import Secret, UnreadSecret
from broker.config.settings import (
    MirrorSettings,
    MsiSettings,
    ProfileSettings,
    ServerSettings,
    SharedSettings,
)

SERVER_KEYS = frozenset(ServerSection.model_fields)
MIRROR_KEYS = frozenset(MirrorSection.model_fields)
MSI_KEYS = frozenset(MsiSection.model_fields)
SHARED_KEY_BYTES = 32  # AES-256


def read_server(r: Reader, s: ServerSection, written: set[str]) -> ServerSettings:
    """`written`: the keys the table sets (some may have failed, and be at their defaults)."""
    socket_group = None
    if s.socket_group is not None:
        ids = r.ids((s.socket_group,), ("server", "socket_group"), "group")
        socket_group = ids[0] if ids else None
    server = ServerSettings(
        listen=s.listeners(),
        required_header=s.header(),
        allowed_hosts=s.hosts(),
        log_format=s.log_format,
        log_level=s.log_level,
        allow_remote=s.allow_remote,
        socket_mode=s.mode(),
        socket_group=socket_group,
        max_connections=s.max_connections,
        max_connections_per_peer=s.max_connections_per_peer,
        unix_reserved_connections=s.unix_reserved_connections,
        read_timeout=s.read_timeout,
        max_header_bytes=s.max_header_bytes,
        audit=s.audit,
        refresh_min_interval=s.refresh_min_interval,
        shutdown_timeout=s.shutdown_timeout,
        event_loop=s.event_loop,
        upstream_proxy=s.upstream_proxy,
        upstream_proxy_credentials=_proxy_credentials(r, s, written),
    )
    if r.offline:
        pass
    elif server.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        r.problem(
            ("server", "event_loop"),
            "uvloop is not installed: pip install 'pc-token-broker[speed]'",
        )
    for listen in server.listen:
        if not listen.is_loopback and not server.allow_remote:
            r.problem(
                ("server", "listen"),
                f"{listen} is not a loopback address: anything that can reach "
                "it could act as the partner; set server.allow_remote = true "
                "to allow it",
            )
        elif not listen.is_loopback:
            r.warn(f"server.listen: {listen} is reachable from other hosts")
    return server


def _proxy_credentials(r: Reader, s: ServerSection, written: set[str]) -> Secret | None:
    """The file holding the proxy's "user:password" (never inline, never in the URL)."""
    if s.upstream_proxy_credentials_file is None:
        return None
    where = ("server", "upstream_proxy_credentials_file")
    values = {"upstream_proxy_credentials_file": s.upstream_proxy_credentials_file}
    secret, _ = r.secret(values, ("server",), "upstream_proxy_credentials", required=False)
    if secret is not None and not isinstance(secret, UnreadSecret) and ":" not in secret.reveal():
        r.problem(where, "the file must hold user:password")
        secret = None
    if "upstream_proxy" not in written:
        r.problem(where, "set server.upstream_proxy too (credentials for which proxy?)")
    return secret


def read_mirror(r: Reader, s: MirrorSection, cloud: object, written: set[str]) -> MirrorSettings:
    """`cloud`: [defaults]' cloud, which moves upstream_base unless [mirror] sets it."""
    upstream_base = s.upstream_base
    cloud_urls = CLOUDS.get(cloud) if isinstance(cloud, str) else None
    if "upstream_base" in written:
        r.url(upstream_base, ("mirror", "upstream_base"), allow_insecure=s.allow_insecure_upstream)
    elif cloud_urls:
        upstream_base = cloud_urls["mirror_upstream_base"]
    return MirrorSettings(
        enabled=s.enabled,
        upstream_base=upstream_base,
        max_entries=s.max_entries,
        min_remaining=s.min_remaining,
        upstream_timeout=s.upstream_timeout,
        allow_insecure_upstream=s.allow_insecure_upstream,
    )


def read_msi(
    r: Reader, s: MsiSection | None, profiles: dict[str, ProfileSettings]
) -> MsiSettings | None:
    if s is None:
        return None
    if s.profile not in profiles and not r.problems:
        r.problem(("msi", "profile"), f"no profile named {s.profile!r}")
    values = {k: getattr(s, k) for k in s.model_fields_set}
    header, header_source = r.secret(values, ("msi",), "identity_header", required=False)
    generated = None
    if s.generated_header_file is not None:
        path = r.expand(s.generated_header_file, ("msi", "generated_header_file"))
        generated = str(path) if path else None
    if (header is None) == (generated is None) and not r.problems:
        r.problem(
            ("msi", "identity_header_file"),
            "give the identity header (identity_header_file or _env) or where to write a "
            "generated one (generated_header_file), not both",
        )
    return MsiSettings(
        profile=s.profile,
        identity_header=header,
        generated_header_file=generated,
        min_remaining=s.min_remaining,
        header_source=header_source,
        imds=s.imds,
    )


def read_shared(r: Reader, s: SharedSection | None) -> SharedSettings | None:
    """[shared]: the Redis every broker of a fleet names. The key comes from a file only (32
    raw bytes, not readable by others); a password from a file only, never inline."""
    if s is None:
        return None

    def at(key: str) -> tuple[str, ...]:
        return ("shared", key)

    before = len(r.problems)
    key: Secret | None = None
    path = r.expand(s.key_file, at("key_file"))
    key_file = str(path) if path is not None else ""
    if path is not None and r.offline:
        key = UnreadSecret()
    elif path is not None:
        raw = _read_key(r, path, at("key_file"))
        key = Secret(raw.hex()) if raw is not None else None
    password: Secret | None = None
    username = password_file = None
    if s.password_file is not None:
        path = r.expand(s.password_file, at("password_file"))
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
    if len(r.problems) > before or key is None:
        return None
    return SharedSettings(
        redis_url=s.redis_url,
        key=key,
        key_file=key_file,
        password=password,
        username=username,
        password_file=password_file,
        prefix=s.prefix,
        lock_timeout=s.lock_timeout,
        timeout=s.timeout,
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
