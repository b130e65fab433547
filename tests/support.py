"""Builders and helpers the test modules share (no test module imports another)."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import ipaddress
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from broker.config.load import parse_settings
from tests.conftest import HEADERS, config_text

ROOT = Path(__file__).resolve().parent.parent  # the repository (mutants/ during a mutation run)

# A token-shaped value (header, payload, signature) that is no token anyone issued.
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def request_of_head_size(size: int) -> bytes:
    """A /v1/token request whose head, blank line included, is exactly `size` bytes."""
    start = b"GET /v1/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nX-Pad: "
    end = b"\r\nConnection: close\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def mirror_head(length: int, bearer: str = "x", extra: str = "") -> bytes:
    """The head of a JSON POST to the /generatetoken mirror announcing a `length`-byte body."""
    return (
        f"POST /generatetoken HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\n{extra}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


AZURE_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)


class Daemon:
    """`python -m broker serve` as a child process, its JSON log lines read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict] = []

    async def wait_for(self, event: str, timeout: float = 20) -> dict:
        """The first `event` ever logged: read log lines until it appears (no sleeping: the next
        line is awaited)."""
        for seen in self.events:
            if seen.get("event") == event:
                return seen
        return await self.next_event(event, timeout)

    async def next_event(self, event: str, timeout: float = 20) -> dict:
        """The next `event` logged from now on (wait_for returns the first ever)."""
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), timeout)
            assert line, f"the daemon exited before logging {event!r}: {self.events[-3:]}"
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.events.append(record)
            if record.get("event") == event:
                return record

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 20)


def unix_config(sandbox, sock: Path, profiles: str | None = None, server: str = "") -> str:
    return config_text(sandbox, server=server, profiles=profiles).replace(
        'listen = ["127.0.0.1:0"]', f'listen = ["unix:{sock}"]'
    )


async def until(condition, what: str, timeout: float = 10.0, every: float = 0.01) -> None:
    """Wait for something another task or process does (a lease taken, Redis back), with a
    deadline: `condition`, a function or a coroutine function, is asked every `every` seconds
    (a poll with a deadline, never a bare sleep in hope)."""
    deadline = time.monotonic() + timeout
    while True:
        done = condition()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(every)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def settle(b) -> None:
    """Wait for every in-flight refresh to land (the partner one may start the aad one)."""
    while flights := [e.flight for e in b.broker.runtime.entries() if e.flight]:
        await asyncio.gather(*flights, return_exceptions=True)


def make_certificate(password: bytes | None = None, ip: str | None = None) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate: (PEM with key and certificate, public certificate PEM).
    With `ip`, it is that address's (its name and subjectAltName), for a TLS server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip or "pc-token-broker test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if ip is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return key_pem + cert_pem, cert_pem


def settings_for(sandbox, profile: str, env: dict[str, str] | None = None):
    text = config_text(sandbox, profiles=profile).replace(
        'client_secret_env = "TEST_CLIENT_SECRET"\n', ""
    )
    return parse_settings(text, env=env or {})


async def raw(address: str, data: bytes) -> bytes:
    """Send raw bytes to a TCP ("host:port") or unix ("unix:/path") listener and read one
    answer: its head, then Content-Length bytes of body (or until the server closes)."""
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            None,
        )
        body = await asyncio.wait_for(
            reader.readexactly(length) if length is not None else reader.read(), 10
        )
    finally:
        writer.close()
    return head + body


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def request_json(address: str, path: str, method: str = "GET", **kwargs) -> tuple[int, dict]:
    """One request to a TCP listener ("host:port") with the required header (and `headers`):
    the status and the JSON body, whatever its Content-Type."""
    async with aiohttp.ClientSession() as s:
        headers = {**HEADERS, **kwargs.pop("headers", {})}
        async with s.request(method, f"http://{address}{path}", headers=headers, **kwargs) as r:
            return r.status, await r.json(content_type=None)


async def serve_process(
    config: Path | str, *args: str, **kwargs: Any
) -> asyncio.subprocess.Process:
    """`python -m broker serve --config CONFIG [args]` as a real child process; `kwargs` go to
    `asyncio.create_subprocess_exec` (env, stdout, stderr)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--config", str(config), *args, **kwargs
    )


def msi_settings(sandbox, secret: str, tmp_path: Path, *, profiles=None, msi_extra: str = ""):
    """Settings with [msi] (a generated identity header in tmp_path/identity-header) and
    `msi_extra` lines in it, e.g. 'imds = true'."""
    text = config_text(sandbox, profiles=profiles) + (
        f'\n[msi]\nprofile = "default"\ngenerated_header_file = "{tmp_path}/identity-header"\n'
        f"{msi_extra}\n"
    )
    return parse_settings(text, env={"TEST_CLIENT_SECRET": secret})


def sha256_hex(token: str) -> str:
    """What MSAL sends as token_sha256_to_refresh for a refused token."""
    import hashlib

    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def msi_token(b, header: str, resource: str, **params) -> tuple[int, dict]:
    """`GET /msi/token` (api-version 2019-08-01) of broker `b` with its identity header."""
    r = await b.client.get(
        "/msi/token",
        params={"api-version": "2019-08-01", "resource": resource, **params},
        headers={"X-IDENTITY-HEADER": header},
    )
    return r.status, await r.json()


def refresh_token_profile(rt_file, extra: str = "") -> str:
    """Profiles `default` and `user` (a refresh-token credential reading `rt_file`), not warm."""
    return f"""[profiles.default]
warm = false
[profiles.user]
credential = "refresh_token"
refresh_token_file = "{rt_file}"
warm = false
{extra}
"""
