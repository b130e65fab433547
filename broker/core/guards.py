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
    """The host of a Host value or authority, without its port; "" when malformed (then it
    matches no allowed host): `[::1].evil.example` is not `[::1]`."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return ""
        return host[: end + 1]
    name, sep, port = host.rpartition(":")
    return name if sep and _is_port(port) else host


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def target_host(headers: Mapping[str, str], target: str) -> str:
    """The host a request names: the authority of an absolute-form request target
    (`GET http://host/path`), which RFC 9112 makes win over Host, else the Host header."""
    if target[:1] == "/" or "://" not in target:
        return headers.get("Host", "")
    authority = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    return authority.rpartition("@")[2] or "\0"  # "\0": an empty authority, never allowed


class OriginGuard:
    """SSRF and DNS-rebinding defences, as Azure IMDS does: no proxied requests, only allowed
    Host names, and (for /v1) the required header a browser or an SSRF cannot add."""

    def __init__(self, server: ServerSettings) -> None:
        self._allowed = server.allowed_hosts
        self._header_name, self._header_value = server.required_header
        self._hosts: dict[str, bool] = {}

    def origin(self, headers: Mapping[str, str], target: str = "/") -> Rejection | None:
        """Refuses proxied requests and foreign hosts. `target`: the raw request target."""
        for name in PROXY_HEADERS:
            if name in headers:
                return Rejection(
                    403,
                    "proxied_request",
                    f"requests through a proxy ({name}) are refused",
                    "proxy_header",
                )
        host = target_host(headers, target)
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

    def v1(self, headers: Mapping[str, str], target: str = "/") -> Rejection | None:
        """Everything a /v1 request must pass. On every cache hit, so written flat: the usual
        request costs five header lookups and no further call."""
        if "X-Forwarded-For" in headers or "Forwarded" in headers or "Via" in headers:
            return self.origin(headers, target)
        allowed = self._hosts.get(headers.get("Host", "")) if target[:1] == "/" else None
        if allowed is None or not allowed:
            rejection = self.origin(headers, target)
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
