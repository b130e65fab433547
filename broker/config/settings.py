"""The settings the broker runs on: frozen, typed, built by `load.py`. Data only.

What each key means, its default and bounds are declared once, in the schema (`schema.py`,
`profile_schema.py`); the defaults here are the schema's, in the form the broker runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.config.listen import Listen
from broker.config.profile_schema import ProfileKeys
from broker.config.schema import MirrorSection, MsiSection, ServerSection, SharedSection
from broker.config.secret import Secret

_SERVER = ServerSection()
_PROFILE = ProfileKeys()
_MIRROR = MirrorSection()
_MSI = MsiSection()
_SHARED = SharedSection.model_fields


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[Listen, ...] = _SERVER.listeners()
    required_header: tuple[str, str] = _SERVER.header()
    allowed_hosts: frozenset[str] = _SERVER.hosts()
    log_format: str = _SERVER.log_format
    log_level: str = _SERVER.log_level
    allow_remote: bool = _SERVER.allow_remote  # binding a non-loopback address must be asked for
    socket_mode: int = _SERVER.mode()  # unix sockets: never world-accessible whatever is asked
    socket_group: int | None = None  # unix sockets: group (gid, from a name or number)
    max_connections: int = _SERVER.max_connections
    max_connections_per_peer: int | None = _SERVER.max_connections_per_peer
    unix_reserved_connections: int = _SERVER.unix_reserved_connections
    read_timeout: float = _SERVER.read_timeout  # s to receive a request's head (and a body)
    max_header_bytes: int = _SERVER.max_header_bytes  # request line and headers together
    audit: bool = _SERVER.audit  # one line per token handed out
    refresh_min_interval: float = _SERVER.refresh_min_interval
    shutdown_timeout: float = _SERVER.shutdown_timeout
    event_loop: str = _SERVER.event_loop  # auto (uvloop when installed) | asyncio | uvloop
    # A forward proxy for every upstream call (HTTPS_PROXY / NO_PROXY are honoured without it);
    # its "user:password" comes from upstream_proxy_credentials_file, never from the URL.
    upstream_proxy: str | None = None
    upstream_proxy_credentials: Secret | None = None


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
    cloud: str = _PROFILE.cloud  # public | usgov | china: where authority, URL and scope came from
    client_secret: Secret | None = None
    secret_source: str = ""  # where the credential comes from, for summaries: "file /x", "env X"
    certificate_pem: Secret | None = None  # key + certificate, validated at load
    certificate_password: Secret | None = None
    signing_algorithm: str = _PROFILE.signing_algorithm
    refresh_token_file: str | None = None  # read at each refresh, rotated token written back
    keep_alive_days: float = 7.0  # an idle refresh_token profile redeems at least this often
    federated_token_file: str | None = None  # re-read at each refresh (it rotates)
    static_token_file: str | None = None  # an AAD token placed by another system
    object_id: str = ""  # the app's service principal object id, for /msi selection
    resource_id: str = ""  # an Azure resource id naming this identity, for /msi selection
    allowed_uids: tuple[int, ...] = ()  # unix-socket callers allowed (empty: any)
    allowed_gids: tuple[int, ...] = ()
    access_key: Secret | None = None  # callers must send it as X-Broker-Key
    allow_insecure_upstream: bool = _PROFILE.allow_insecure_upstream  # plain http off loopback
    # Customer tenants (GDAP): on when customer_tenants is non-empty. ("*",) means any tenant.
    scopes: tuple[str, ...] = ()  # more resources of its own tenant (/msi, ?scope=)
    customer_tenants: tuple[str, ...] = ()  # lower-case tenant ids / domains
    customer_scopes: tuple[str, ...] = ()  # the first is the default
    max_customer_tokens: int = _PROFILE.max_customer_tokens  # cached (tenant, scope) tokens
    upstream_concurrency: int = _PROFILE.upstream_concurrency  # AAD calls for customer tenants
    customer_fetch_rate: float = _PROFILE.customer_fetch_rate  # new entries per second
    customer_fetch_burst: int = _PROFILE.customer_fetch_burst  # new entries at once

    @property
    def serves_customers(self) -> bool:
        return bool(self.customer_tenants)

    def customer_token_url(self, tenant: str) -> str:
        return f"{self.authority.rstrip('/')}/{tenant}/oauth2/v2.0/token"

    @property
    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    enabled: bool = _MIRROR.enabled
    upstream_base: str = _MIRROR.upstream_base
    max_entries: int = _MIRROR.max_entries
    min_remaining: float = _MIRROR.min_remaining
    upstream_timeout: float = _MIRROR.upstream_timeout
    allow_insecure_upstream: bool = _MIRROR.allow_insecure_upstream  # plain http off loopback


@dataclass(frozen=True, slots=True)
class MsiSettings:
    """The App Service managed-identity endpoint (/msi/token), on when [msi] is present."""

    profile: str = _MSI.profile
    identity_header: Secret | None = None  # from identity_header_file / _env
    generated_header_file: str | None = None  # else: generate one at start-up, write it here
    # 420 s: the Azure SDKs treat a token with under 300 s left (minus up to 60 s of jitter)
    # as due for refresh and would come back on every call.
    min_remaining: float = _MSI.min_remaining
    header_source: str = ""  # where identity_header comes from, for summaries: "file /x"
    imds: bool = _MSI.imds  # also the VM protocol: /metadata/identity/oauth2/token


@dataclass(frozen=True, slots=True)
class SharedSettings:
    """A fleet's shared cache in Redis ([shared]); absent: every broker caches on its own."""

    redis_url: str  # redis://, rediss:// (TLS) or unix://
    key: Secret  # the 32-byte AES-256-GCM key, hex-encoded, the same on every broker
    key_file: str = ""
    password: Secret | None = None
    username: str | None = None  # from a "user:password" password_file (Redis ACL users)
    password_file: str | None = None
    prefix: str = _SHARED["prefix"].default
    lock_timeout: float = _SHARED["lock_timeout"].default  # s a fetch lease lives unless renewed
    timeout: float = _SHARED["timeout"].default  # s per Redis call: a slow Redis: fetch alone


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    profiles: Mapping[str, ProfileSettings]
    mirror: MirrorSettings
    msi: MsiSettings | None = None
    shared: SharedSettings | None = None
    source: str | None = None
    warnings: tuple[str, ...] = field(default=())
    # Read without secrets, environment or host lookups (check-config --offline, msi-env):
    # good for describing a config, never for serving it.
    offline: bool = False
