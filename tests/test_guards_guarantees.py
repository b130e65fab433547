"""The origin guards, each rejection to the letter: Host names with and without ports (IPv6
bracketed), no Host at all, proxy headers, the required header; and the same through the real
server with raw requests."""

from __future__ import annotations

import pytest

from broker.config.settings import ServerSettings
from broker.core.guards import OriginGuard, Rejection, strip_port
from tests.test_security import raw, settings, status_and_json

OK = {"Host": "localhost:8721", "Metadata": "true"}
HOST_REJECTION = Rejection(
    403, "host_not_allowed", "the Host header is not in server.allowed_hosts", "host"
)


@pytest.mark.parametrize(
    ("host", "stripped"),
    [
        ("[::1]:8721", "[::1]"),
        ("[::1]", "[::1]"),
        ("[FE80::1]:80", "[fe80::1]"),
        ("localhost:8721", "localhost"),
        ("LocalHost", "localhost"),
        ("127.0.0.1:0", "127.0.0.1"),
        ("localhost:", "localhost:"),
        ("localhost:http", "localhost:http"),
        ("", ""),
    ],
)
def test_strip_port(host: str, stripped: str) -> None:
    assert strip_port(host) == stripped


@pytest.mark.parametrize(
    "host", ["[::1]:8721", "[::1]", "localhost", "LOCALHOST:1", "127.0.0.1:8721"]
)
def test_allowed_hosts_pass_with_or_without_a_port(host: str) -> None:
    guard = OriginGuard(ServerSettings())
    headers = {**OK, "Host": host}
    assert guard.origin(headers) is None
    assert guard.v1(headers) is None
    assert guard.v1(headers) is None  # remembered: the same answer


@pytest.mark.parametrize(
    "host",
    ["", "attacker.example", "localhost.attacker.example", "[::2]:8721", "localhost:x", "::1"],
)
def test_other_hosts_and_no_host_are_refused(host: str) -> None:
    guard = OriginGuard(ServerSettings())
    headers = {"Metadata": "true", **({"Host": host} if host else {})}
    for _ in range(2):  # the second time from memory
        assert guard.origin(headers) == HOST_REJECTION
        assert guard.v1(headers) == HOST_REJECTION


@pytest.mark.parametrize("name", ["X-Forwarded-For", "Forwarded", "Via"])
def test_proxied_requests_are_refused_whatever_the_host(name: str) -> None:
    guard = OriginGuard(ServerSettings())
    headers = {**OK, name: "10.0.0.1"}
    expected = Rejection(
        403, "proxied_request", f"requests through a proxy ({name}) are refused", "proxy_header"
    )
    assert guard.v1(OK) is None  # the Host is remembered as allowed first
    assert guard.origin(headers) == expected
    assert guard.v1(headers) == expected


@pytest.mark.parametrize(
    "headers", [{"Host": "localhost"}, {"Host": "localhost", "Metadata": "false"}]
)
def test_the_required_header_is_required_by_v1_only(headers: dict) -> None:
    guard = OriginGuard(ServerSettings())
    expected = Rejection(
        400,
        "required_header_missing",
        "every /v1 request must carry the header 'Metadata: true'",
        "required_header",
    )
    assert guard.v1(headers) == expected
    assert guard.v1(headers) == expected
    assert guard.required_header(headers) == expected
    assert guard.origin(headers) is None
    assert guard.required_header({**headers, "Metadata": "true"}) is None


def test_a_configured_header_and_host_list_are_used() -> None:
    guard = OriginGuard(
        ServerSettings(required_header=("X-Token-Please", "yes"), allowed_hosts=frozenset({"pcb"}))
    )
    assert guard.v1({"Host": "pcb:1", "X-Token-Please": "yes"}) is None
    assert guard.v1({"Host": "localhost", "X-Token-Please": "yes"}) == HOST_REJECTION
    assert guard.v1({"Host": "pcb", "Metadata": "true"}).code == "required_header_missing"


def test_the_host_memory_is_bounded_and_answers_stay_right() -> None:
    """Host values are chosen by the caller: at most 256 are remembered."""
    guard = OriginGuard(ServerSettings())
    for i in range(1000):
        assert guard.v1({"Host": f"h{i}.example", "Metadata": "true"}) == HOST_REJECTION
        assert len(guard._hosts) <= 256
    assert guard.v1(OK) is None
    assert len(guard._hosts) == 1000 % 256 + 1


@pytest.mark.parametrize(
    ("host_line", "status"),
    [
        (b"Host: [::1]:8721\r\n", 200),
        (b"Host: [::1]\r\n", 200),
        (b"", 403),  # no Host at all (HTTP/1.0 allows it)
        (b"Host: [::2]:8721\r\n", 403),
    ],
)
async def test_raw_requests_by_host(sandbox, secret, run_server, host_line, status):
    (address,), _ = await run_server(settings(sandbox, secret))
    head = b"GET /v1/token HTTP/1.0\r\n" + host_line + b"Metadata: true\r\n\r\n"
    got, body = status_and_json(await raw(address, head))
    assert got == status
    if status == 200:
        assert body["access_token"]
    else:
        assert body["error"]["code"] == "host_not_allowed"
