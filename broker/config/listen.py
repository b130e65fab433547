"""Listener addresses: "HOST:PORT", "[v6]:PORT", "unix:/path". Parsing only."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address, no port, no brackets) is this machine: localhost,
    127.0.0.0/8 or ::1. The one loopback check: listen addresses and upstream URLs use it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Listen:
    kind: str  # "tcp" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def tcp(cls, host: str, port: int) -> Listen:
        return cls("tcp", host=host, port=port)

    @classmethod
    def unix(cls, path: str) -> Listen:
        return cls("unix", path=path)

    @property
    def is_loopback(self) -> bool:
        return self.kind == "unix" or is_loopback_host(self.host or "")

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """Parse one listen entry; ValueError says what is wrong."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute")
        return Listen.unix(path)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [ADDR]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, [ADDR]:PORT or unix:/path")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, not {port!r}")
    return Listen.tcp(host, int(port))
