"""Request guards shared by every endpoint family. Each returns a `Rejection` (or None); the
caller renders it in its own error shape (broker JSON, Partner Center, managed identity)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.config.settings import ServerSettings

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "Via")
_MEMO_MAX = 256  # Host values remembered; attacker-chosen, so bounded


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    code: str
    message: str
    reason: str  # the metrics label


def strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    name, sep, port = host.rpartition(":")
    return (name if sep and port.isdigit() else host).lower()


class OriginGuard:
    """SSRF and DNS-rebinding defences, as Azure IMDS does: no proxied requests, only allowed
    Host names, and (for /v1) the required header a browser or an SSRF cannot add."""

    def __init__(self, server: ServerSettings) -> None:
        self._allowed = server.allowed_hosts
        self._header_name, self._header_value = server.required_header
        self._hosts: dict[str, bool] = {}

    def origin(self, headers: Mapping[str, str]) -> Rejection | None:
        for name in PROXY_HEADERS:
            if name in headers:
                return Rejection(
                    403,
                    "proxied_request",
                    f"requests through a proxy ({name}) are refused",
                    "proxy_header",
                )
        host = headers.get("Host", "")
        allowed = self._hosts.get(host)
        if allowed is None:
            allowed = strip_port(host) in self._allowed
            if len(self._hosts) >= _MEMO_MAX:
                self._hosts.clear()
            self._hosts[host] = allowed
        if not allowed:
            return Rejection(
                403, "host_not_allowed", "the Host header is not in server.allowed_hosts", "host"
            )
        return None

    def v1(self, headers: Mapping[str, str]) -> Rejection | None:
        """Everything a /v1 request must pass. On every cache hit, so written flat: the usual
        request costs five header lookups and no further call."""
        if "X-Forwarded-For" in headers or "Forwarded" in headers or "Via" in headers:
            return self.origin(headers)
        allowed = self._hosts.get(headers.get("Host", ""))
        if allowed is None or not allowed:
            rejection = self.origin(headers)
            if rejection is not None:
                return rejection
        if headers.get(self._header_name) != self._header_value:
            return self.required_header(headers)
        return None

    def required_header(self, headers: Mapping[str, str]) -> Rejection | None:
        if headers.get(self._header_name) != self._header_value:
            return Rejection(
                400,
                "required_header_missing",
                f"every /v1 request must carry the header "
                f"'{self._header_name}: {self._header_value}'",
                "required_header",
            )
        return None
