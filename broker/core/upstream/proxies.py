"""Which forward proxy an upstream call goes through: `[server] upstream_proxy`, else the
environment's HTTPS_PROXY / HTTP_PROXY / NO_PROXY."""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from broker.config.secret import Secret


def _proxy_authorization(userinfo: str) -> dict[str, str]:
    """Basic credentials for the proxy, from "user:password"."""
    encoded = base64.b64encode(userinfo.encode("utf-8")).decode("ascii")
    return {"Proxy-Authorization": f"Basic {encoded}"}


# The standard library's NO_PROXY matcher (urllib.request, used by its own proxy handling): not
# in typeshed's stubs, so named here once with its type.
_bypass: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


class Proxies:
    """Which forward proxy an upstream URL goes through: none for a NO_PROXY host, else
    `[server] upstream_proxy` when set, else HTTPS_PROXY / HTTP_PROXY (by the URL's scheme).

    The environment is read once, at start-up, as curl and requests read it (lower case first).
    Unlike aiohttp's trust_env, ~/.netrc is never read: no credential reaches upstream by
    accident.
    """

    def __init__(
        self,
        configured: str | None = None,
        credentials: Secret | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.configured = configured
        self._auth: dict[str, str] | None = None
        if credentials is not None:
            self._auth = _proxy_authorization(credentials.reveal())
        if env is None:
            self._env = urllib.request.getproxies_environment()
        else:  # the same rules, from a given mapping (tests)
            self._env = {
                k.lower()[: -len("_proxy")]: v
                for k, v in sorted(env.items(), key=lambda kv: kv[0].islower())
                if k.lower().endswith("_proxy") and v
            }

    def for_url(self, url: str) -> tuple[str | None, dict[str, str] | None]:
        """The proxy URL for `url` and the headers for it (Proxy-Authorization), or Nones."""
        parts = urllib.parse.urlsplit(url)
        if self._env.get("no") and _bypass(parts.netloc, self._env):
            return None, None
        if self.configured:
            return self.configured, self._auth
        proxy = self._env.get(parts.scheme)
        if not proxy:
            return None, None
        bare = urllib.parse.urlsplit(proxy)  # HTTPS_PROXY=http://user:password@host:port
        if bare.username is None:
            return proxy, None
        userinfo = (
            f"{urllib.parse.unquote(bare.username)}:{urllib.parse.unquote(bare.password or '')}"
        )
        plain = bare._replace(netloc=bare.netloc.rpartition("@")[2]).geturl()
        return plain, _proxy_authorization(userinfo)

    def describe(self) -> str:
        """For the start-up banner: where proxies come from, without any credentials."""
        parts = []
        if self.configured:
            parts.append(f"upstream_proxy {self.configured}")
        for scheme in ("https", "http"):
            if self._env.get(scheme):
                bare = urllib.parse.urlsplit(self._env[scheme])
                parts.append(f"{scheme.upper()}_PROXY {bare.hostname}:{bare.port or ''}")
        if self._env.get("no"):
            parts.append(f"NO_PROXY {self._env['no']}")
        return "; ".join(parts) or "none"
