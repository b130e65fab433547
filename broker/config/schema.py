"""The configuration file's schema: every key once, with its type, default, bounds, meaning and
whether a reload applies it. Validation (`load.py`), the settings' defaults (`settings.py`), the
CLI's reading of [server] and the key reference (`reference.py`) all come from here; a test keeps
config.example.toml in step with it.

These models check the file as written (types, bounds, formats, unknown keys); the readers in
`sections.py` and `profiles.py` then add what needs the environment or the host (secrets, files,
names) and the checks across keys, and build the frozen settings the broker runs on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from broker.config.clouds import CLOUDS
from broker.config.fields import (
    Flag,
    GroupId,
    Header,
    Listens,
    Number,
    OctalMode,
    Prefix,
    ProxyUrl,
    RedisUrl,
    Section,
    Strings,
    Text,
    Url,
    Whole,
    header_pair,
    setting,
)
from broker.config.listen import Listen, parse_listen
from broker.config.profile_schema import ProfileKeys, ProfileName


class ServerSection(Section):
    """[server]: how the daemon listens, guards and logs."""

    listen: Listens = setting(
        ("127.0.0.1:8721",),
        'where the daemon listens: "HOST:PORT", "[::1]:PORT" or "unix:/path"; several at once',
        restart=True,
    )
    required_header: Header = setting(
        "Metadata: true", "every /v1/* request must carry this header (an SSRF guard)"
    )
    allowed_hosts: Strings = setting(
        ("localhost", "127.0.0.1", "[::1]"),
        "Host header allowlist (a DNS-rebinding guard); ports are ignored",
    )
    log_format: Literal["json", "console"] = setting(
        "json", "how log lines are written", restart=True
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "the least severe log line written", restart=True
    )
    audit: Flag = setting(True, "one log line per token handed out (never the token)")
    allow_remote: Flag = setting(
        False, "allow listening on addresses other than loopback and unix sockets", restart=True
    )
    socket_mode: OctalMode = setting(
        "0660", "unix sockets' mode (octal); any bit for others is refused", restart=True
    )
    socket_group: GroupId | None = setting(
        None, "unix sockets' group, a name or a gid (default: the process's)", restart=True
    )
    max_connections: Whole = setting(
        256, "open connections at most; idle ones are closed first, then a 429", ge=1, le=1_000_000
    )
    max_connections_per_peer: Whole | None = setting(
        None,
        "open connections of one caller, a uid on the unix socket or an address over TCP "
        "(default: max_connections; on loopback every TCP tool is 127.0.0.1)",
        ge=1, le=1_000_000,
    )  # fmt: skip
    unix_reserved_connections: Whole = setting(
        32, "of max_connections, held for the unix socket: TCP callers never take them",
        ge=0, le=1_000_000,
    )  # fmt: skip
    # Live: the connection gate reads both at each use (aiohttp's own line limits and lingering
    # time follow them for the connections opened after a reload).
    read_timeout: Number = setting(
        10.0, "seconds to send a request's head (slowloris guard)", ge=0.1, le=600
    )
    max_header_bytes: Whole = setting(
        8192, "request line and headers together; more gets a 431", ge=1024, le=1 << 20
    )
    refresh_min_interval: Number = setting(
        10.0, "seconds between forced refreshes of one profile (429)", ge=0, le=3600
    )
    shutdown_timeout: Number = setting(
        10.0, "seconds in-flight requests get to finish after SIGTERM", ge=0, le=600,
        restart=True,  # the runner is given it at start-up
    )  # fmt: skip
    event_loop: Literal["auto", "asyncio", "uvloop"] = setting(
        "auto", "auto: uvloop when installed (the speed extra)", restart=True
    )
    upstream_proxy: ProxyUrl | None = setting(
        None, "a forward proxy (http://HOST:PORT) for every upstream call", restart=True
    )
    upstream_proxy_credentials_file: Text | None = setting(
        None,
        'a file holding the proxy\'s "user:password" (${VAR} expanded)',
        restart=True,
        attribute="upstream_proxy_credentials",
    )

    def listeners(self) -> tuple[Listen, ...]:
        return tuple(parse_listen(entry) for entry in self.listen)

    def header(self) -> tuple[str, str]:
        return header_pair(self.required_header)

    def hosts(self) -> frozenset[str]:
        return frozenset(host.lower() for host in self.allowed_hosts)

    def mode(self) -> int:
        return int(self.socket_mode, 8)


class MirrorSection(Section):
    """[mirror]: the drop-in /generatetoken and /v3/generatetoken endpoints."""

    enabled: Flag = setting(True, "serve the drop-in /generatetoken endpoints")
    upstream_base: Url = setting(
        CLOUDS["public"]["mirror_upstream_base"],
        "where passthrough calls go (default: [defaults] cloud's Partner Center)",
    )
    max_entries: Whole = setting(10000, "bounded cache of passthrough tokens", ge=1, le=10_000_000)
    min_remaining: Number = setting(
        30.0, "serve a cached passthrough token while this many seconds remain", ge=0, le=3600
    )
    upstream_timeout: Number = setting(
        10.0, "seconds per upstream call; also the longest a caller waits", ge=0.1, le=300
    )
    allow_insecure_upstream: Flag = setting(
        False, "allow a plain http:// upstream_base off loopback"
    )


class MsiSection(Section):
    """[msi]: the App Service managed-identity endpoint, on when the table is present."""

    profile: Text = setting("default", "the identity served when the SDK names none")
    identity_header_file: Text | None = setting(
        None, "a file holding the X-IDENTITY-HEADER secret (${VAR} expanded)"
    )
    identity_header_env: Text | None = setting(
        None, "an environment variable holding the X-IDENTITY-HEADER secret"
    )
    generated_header_file: Text | None = setting(
        None, "or: generate the secret at start-up and write it here (mode 0600)"
    )
    min_remaining: Number = setting(
        420.0, "serve a token only while this many seconds remain (SDKs refresh under 300 s)",
        ge=0, le=3600,
    )  # fmt: skip
    imds: bool = setting(
        False,
        "also answer the VM protocol, GET /metadata/identity/oauth2/token with `Metadata: true` "
        "(no secret header: any process that can connect to a listener gets the unrestricted "
        "profiles' tokens; the Host allowlist and the refusal of proxied requests still apply)",
    )


class SharedSection(Section):
    """[shared]: a fleet's cache in Redis, on when the table is present."""

    redis_url: RedisUrl = setting(
        ...,
        "redis://HOST:PORT/DB, rediss:// for TLS, or unix:///PATH",
        restart=True,
        missing="required, e.g. redis://127.0.0.1:6379/0",
    )
    password_file: Text | None = setting(
        None, 'a file holding the password, or "user:password" for ACL users', restart=True
    )
    key_file: Text = setting(
        ...,
        "32 random bytes, the same on every broker (the AES-256-GCM key)",
        restart=True,
        missing="required: a file of 32 random bytes, the same on every broker",
    )
    prefix: Prefix = setting("pc-token-broker", "namespace for the keys", restart=True)
    lock_timeout: Number = setting(
        15.0, "seconds a fetch lease lives unless renewed (every third)", ge=1, le=600,
        restart=True,
    )  # fmt: skip
    timeout: Number = setting(
        1.0, "seconds per Redis call; a slower Redis means fetching alone", ge=0.01, le=30,
        restart=True,
    )  # fmt: skip


class ConfigFile(Section):
    """The whole file."""

    server: ServerSection = Field(default_factory=ServerSection)
    defaults: ProfileKeys = Field(
        default_factory=ProfileKeys, description="what every profile inherits"
    )
    profiles: dict[ProfileName, ProfileKeys] = Field(
        default_factory=dict, description="the profiles, by name"
    )
    mirror: MirrorSection = Field(default_factory=MirrorSection)
    msi: MsiSection | None = None
    shared: SharedSection | None = None


SECTIONS: dict[str, type[Section]] = {
    "server": ServerSection,
    "mirror": MirrorSection,
    "msi": MsiSection,
    "shared": SharedSection,
}
