"""What both sides of bench/msal_peer.py share: the tenants, scopes and 1.3 KB tokens."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

SCOPES = (
    "https://graph.microsoft.com/.default",
    "https://outlook.office365.com/.default",
    "https://management.azure.com/.default",
)
CLIENT_ID = "00000000-0000-4000-8000-00000000be4c"
AUTHORITY = "https://login.microsoftonline.com"
HITS = 2000  # in process
WIRE_HITS = 10_000  # over loopback, per profile: a p99 the machine's noise moves less
LIFETIME = 3599  # seconds: what Azure AD gives an app token
NEAR = 240  # seconds left on a near-expiry token: MSAL refreshes below 5 minutes


def tenant(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def token_value(i: int, scope: str, lifetime: float) -> str:
    """A JWT-shaped token of about 1.3 KB (a delegated Graph token's size), distinct per call."""
    now = int(time.time())
    claims = {
        "aud": scope.removesuffix("/.default"),
        "iss": f"https://sts.windows.net/{tenant(i)}/",
        "iat": now,
        "nbf": now,
        "exp": int(now + lifetime),
        "tid": tenant(i),
        "appid": CLIENT_ID,
        "oid": str(uuid.uuid4()),
        "roles": ["Directory.Read.All", "Group.ReadWrite.All", "User.Read.All"],
        "wids": [str(uuid.uuid4()) for _ in range(3)],
        "uti": uuid.uuid4().hex,
        "rh": "0." + uuid.uuid4().hex * 3,
        "xms_tcdt": 1600000000,
    }
    header = b'{"alg":"RS256","typ":"JWT","kid":"bench"}'
    parts = [header, json.dumps(claims).encode(), os.urandom(256)]
    return ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)


def pct(values: list[float], q: float) -> float:
    """The q-quantile in microseconds (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def samples_for(n: int, quick: bool) -> int:
    """Misses and refreshes sampled at n tenants."""
    count = 200 if n <= 1000 else 100 if n <= 10_000 else 30
    return max(10, count // 2) if quick else count
