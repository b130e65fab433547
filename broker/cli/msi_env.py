"""`pc-token-broker msi-env`: the environment that points Azure SDKs at the broker's
managed-identity endpoint, as shell export lines for `eval "$(pc-token-broker msi-env)"`."""

from __future__ import annotations

import shlex

from broker.config.files import read_text
from broker.config.load import is_tenant
from broker.config.settings import Settings


def endpoint(settings: Settings) -> str:
    """IDENTITY_ENDPOINT: the SDKs speak HTTP over TCP, so the first TCP listener."""
    for listen in settings.server.listen:
        if listen.kind == "tcp":
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{listen.port}/msi/token"
    raise ValueError("the Azure SDKs need a TCP listener: add one to server.listen")


def export_lines(
    settings: Settings, profile: str | None = None, tenant: str | None = None, imds: bool = False
) -> str:
    msi = settings.msi
    if msi is None:
        raise ValueError("the managed-identity endpoint is not configured: add an [msi] table")
    if imds:
        if tenant is not None:
            raise ValueError("--tenant names an App Service route: IMDS has no customer tenants")
        return _imds_lines(settings, profile)
    if msi.identity_header is not None:
        header = msi.identity_header.reveal()
    else:
        assert msi.generated_header_file is not None
        try:
            header = read_text(msi.generated_header_file)
        except (OSError, ValueError):
            raise ValueError(
                f"cannot read {msi.generated_header_file}: the broker writes it at "
                "start-up (is it running, and may this user read the file?)"
            ) from None
    url = endpoint(settings)
    if tenant is not None:  # a customer tenant's tokens (a profile with customer_tenants)
        if not is_tenant(tenant):
            raise ValueError(f"{tenant[:80]!r} is not a tenant id or domain")
        url = url.removesuffix("/msi/token") + f"/msi/tenants/{tenant.lower()}/token"
    lines = [
        f"export IDENTITY_ENDPOINT={shlex.quote(url)}",
        f"export IDENTITY_HEADER={shlex.quote(header)}",
    ]
    if profile is not None and profile != msi.profile:
        if profile not in settings.profiles:
            raise ValueError(f"no profile named {profile!r}")
        # DefaultAzureCredential passes AZURE_CLIENT_ID as the managed identity's client_id.
        lines.append(f"export AZURE_CLIENT_ID={shlex.quote(settings.profiles[profile].client_id)}")
    return "\n".join(lines)


def _imds_lines(settings: Settings, profile: str | None) -> str:
    """The IMDS route: AZURE_POD_IDENTITY_AUTHORITY_HOST (azure-identity and MSAL send their
    IMDS requests there), no secret to pass on."""
    msi = settings.msi
    assert msi is not None
    if not msi.imds:
        raise ValueError("the IMDS route is off: set [msi] imds = true")
    host = endpoint(settings).removesuffix("/msi/token")
    lines = [f"export AZURE_POD_IDENTITY_AUTHORITY_HOST={shlex.quote(host)}"]
    if profile is not None and profile != msi.profile:
        if profile not in settings.profiles:
            raise ValueError(f"no profile named {profile!r}")
        lines.append(f"export AZURE_CLIENT_ID={shlex.quote(settings.profiles[profile].client_id)}")
    return "\n".join(lines)
