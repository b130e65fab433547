"""bench/msal_peer.py's MSAL side, run in a process of its own (`--child msal`): one
`msal.TokenCache` filled with N tenants x 3 scopes, one `ConfidentialClientApplication` per
tenant asked through it, HTTP answered in process by `InProcessHttp` (MSAL's public
`http_client` parameter): nothing leaves the process."""

from __future__ import annotations

import gc
import json
import os
import random
import time
from typing import Any

from bench.common import rss_mb
from bench.peer_common import (
    AUTHORITY,
    CLIENT_ID,
    HITS,
    LIFETIME,
    NEAR,
    SCOPES,
    samples_for,
    tenant,
    token_value,
)


class _Answer:
    """What MSAL's http_client interface returns (msal.oauth2cli.http.Response)."""

    def __init__(self, text: str) -> None:
        self.status_code = 200
        self.text = text
        self.headers: dict[str, str] = {}

    def raise_for_status(self) -> None:
        return None


class InProcessHttp:
    """An `http_client` for MSAL: answers discovery and token requests in process. `started`
    is when MSAL last handed it a token request: the upstream call would start there."""

    def __init__(self) -> None:
        self.started = 0.0
        self.lifetime = LIFETIME

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> _Answer:
        tenant_id = url.split("/")[3]
        base = f"{AUTHORITY}/{tenant_id}"
        return _Answer(
            json.dumps(
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                }
            )
        )

    def post(self, url: str, params: Any = None, data: Any = None, **_: Any) -> _Answer:
        self.started = time.perf_counter()
        scope = str((data or {}).get("scope", SCOPES[0])).split()[0]
        body = {"access_token": token_value(0, scope, self.lifetime), "token_type": "Bearer"}
        return _Answer(json.dumps({**body, "expires_in": self.lifetime}))


def msal_child(n: int, quick: bool) -> dict[str, Any]:
    import msal

    http = InProcessHttp()
    samples = samples_for(n, quick)
    near = set(random.sample(range(n), min(samples, n)))  # tenants whose first scope is near expiry
    cache = msal.TokenCache()
    gc.collect()
    before = rss_mb(os.getpid())
    for i in range(n):
        for s, scope in enumerate(SCOPES):
            life = NEAR if (s == 0 and i in near) else LIFETIME
            cache.add(
                {
                    "client_id": CLIENT_ID,
                    "scope": [scope],
                    "token_endpoint": f"{AUTHORITY}/{tenant(i)}/oauth2/v2.0/token",
                    "environment": "login.microsoftonline.com",
                    "response": {
                        "access_token": token_value(i, scope, life),
                        "expires_in": life,
                        "token_type": "Bearer",
                    },
                }
            )
    gc.collect()
    per_token_kb = (rss_mb(os.getpid()) - before) * 1024 / (n * len(SCOPES))

    apps: dict[int, Any] = {}

    def app(i: int) -> Any:
        if i not in apps:
            apps[i] = msal.ConfidentialClientApplication(
                CLIENT_ID,
                client_credential="bench-secret",
                authority=f"{AUTHORITY}/{tenant(i)}",
                token_cache=cache,
                http_client=http,
                instance_discovery=False,
            )
        return apps[i]

    hit_keys = [(random.randrange(n), random.randrange(1, len(SCOPES))) for _ in range(HITS)]
    hit_apps = {i for i, _ in hit_keys}
    for i in hit_apps:
        app(i)
    hits = []
    for i, s in hit_keys:
        a = app(i)
        start = time.perf_counter()
        result = a.acquire_token_for_client([SCOPES[s]])
        hits.append(time.perf_counter() - start)
        assert result.get("token_source") == "cache", result

    def upstream_bound(tenants: list[int]) -> list[float]:
        out = []
        for i in tenants:
            a = app(i)
            start = time.perf_counter()
            result = a.acquire_token_for_client([SCOPES[0]])
            out.append(http.started - start)
            assert result.get("token_source") == "identity_provider", result
        return out

    misses = upstream_bound(list(range(n, n + samples)))  # tenants with nothing cached
    refreshes = upstream_bound(sorted(near))
    return {
        "hit": hits,
        "miss": misses,
        "refresh": refreshes,
        "per_token_kb": per_token_kb,
        "samples": samples,
    }
