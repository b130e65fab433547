"""Sovereign clouds: one `cloud` key sets the Azure AD authority, the Partner Center
`generatetoken_url` and the scope together. Explicit keys still win.

Layering (lowest first): built-in defaults < [defaults].cloud < [defaults] keys <
profile cloud < profile keys. So a profile that names its own cloud moves all three endpoints
to it, even if [defaults] set one of them; a key the profile sets itself is kept.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

_PUBLIC_PC = "https://api.partnercenter.microsoft.com"
# 21Vianet's Partner Center: the API URL is its own Azure AD resource (audience).
_CHINA_PC = "https://partner.partnercenterapi.microsoftonline.cn"

CLOUDS: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {
        "public": MappingProxyType(
            {
                "authority": "https://login.microsoftonline.com",
                "generatetoken_url": f"{_PUBLIC_PC}/v3/generatetoken",
                "scope": f"{_PUBLIC_PC}/.default",
                "mirror_upstream_base": _PUBLIC_PC,
            }
        ),
        "usgov": MappingProxyType(
            {
                "authority": "https://login.microsoftonline.us",
                "generatetoken_url": f"{_PUBLIC_PC}/v3/generatetoken",
                "scope": f"{_PUBLIC_PC}/.default",
                "mirror_upstream_base": _PUBLIC_PC,
            }
        ),
        "china": MappingProxyType(
            {
                "authority": "https://login.chinacloudapi.cn",
                # /v3/generatetoken accepts only tokens for the public audience: the legacy
                # path is the one that takes 21Vianet's.
                "generatetoken_url": f"{_CHINA_PC}/generatetoken",
                "scope": f"{_CHINA_PC}/.default",
                "mirror_upstream_base": _CHINA_PC,
            }
        ),
    }
)
CLOUD_KEYS = ("authority", "generatetoken_url", "scope")


def cloud_keys(name: Any) -> dict[str, str]:
    """The profile keys a cloud sets ({} for an unknown name: the reader reports it)."""
    cloud = CLOUDS.get(name) if isinstance(name, str) else None
    return {k: cloud[k] for k in CLOUD_KEYS} if cloud else {}
