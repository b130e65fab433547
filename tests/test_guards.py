"""The origin guards, each rejection to the letter: Host names with and without ports (IPv6
bracketed), no Host at all, proxy headers, the required header; and the same through the real
server with raw requests."""

from __future__ import annotations

import pytest

from broker.config.settings import ServerSettings
from broker.core.guards import OriginGuard, Rejection, strip_port, target_host
from tests.conftest import make_settings
from tests.support import raw, status_and_json

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
    (address,), _ = await run_server(make_settings(sandbox, secret))
    head = b"GET /v1/token HTTP/1.0\r\n" + host_line + b"Metadata: true\r\n\r\n"
    got, body = status_and_json(await raw(address, head))
    assert got == status
    if status == 200:
        assert body["access_token"]
    else:
        assert body["error"]["code"] == "host_not_allowed"


async def test_host_edge_cases(sandbox, secret, run_server):
    """`[::1].evil.example` is not `[::1]`; the authority of an absolute-form request target
    wins over Host (RFC 9112), both ways."""
    (address,), _ = await run_server(make_settings(sandbox, secret))
    cases = [
        (b"GET /v1/token HTTP/1.1\r\nHost: [::1].evil.example", 403),
        (b"GET /v1/token HTTP/1.1\r\nHost: [::1]:8721", 200),
        (b"GET http://evil.example/v1/token HTTP/1.1\r\nHost: localhost", 403),
        (b"GET http://localhost:8721/v1/token HTTP/1.1\r\nHost: evil.example", 200),
        (b"GET http://evil.example/metrics HTTP/1.1\r\nHost: localhost", 403),
    ]
    for head, expected in cases:
        answer = await raw(address, head + b"\r\nMetadata: true\r\nConnection: close\r\n\r\n")
        assert status_and_json(answer)[0] == expected, head


@pytest.mark.parametrize(
    "host",
    [
        "[::1].evil.example",  # the bracket is not the end of the name
        "[::1]x8721",  # no colon before the port
        "[::1]:http",  # a port that is not digits
        "[::1]:x8721",
        "[::1]:",  # a colon and no port
        "[::1]]",
        "[::1",  # never closed
    ],
)
def test_a_malformed_bracketed_host_strips_to_nothing(host: str) -> None:
    """ "" matches no allowed host: `[::1]` followed by anything but `:digits` is not `[::1]`."""
    assert strip_port(host) == ""
    guard = OriginGuard(ServerSettings())
    assert guard.origin({**OK, "Host": host}) == HOST_REJECTION
    assert guard.v1({**OK, "Host": host}) == HOST_REJECTION


def test_only_the_last_colon_can_start_a_port() -> None:
    assert strip_port("localhost:8721:80") == "localhost:8721"
    assert strip_port("a:b:c") == "a:b:c"


# -- the absolute-form request target (`GET http://host/path`) names the host, not Host ---------


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("/v1/token", "from-header"),
        ("*", "from-header"),  # OPTIONS *: no authority in it
        ("v1/token", "from-header"),
        ("http://localhost/v1/token", "localhost"),
        ("http://localhost:8721/v1/token?x=1", "localhost:8721"),
        ("http://localhost:8721", "localhost:8721"),
        ("http://localhost?next=/v1", "localhost"),
        ("http://localhost?x=1?y=2", "localhost"),
        ("HTTP://[::1]:8721/a/b/c", "[::1]:8721"),
        ("http://user@localhost/", "localhost"),
        ("http://a@b@localhost/", "localhost"),
        ("http://localhost/?u=http://evil.example/", "localhost"),
        ("http://localhost://evil.example/", "localhost:"),
        ("http:///v1/token", "\0"),  # an empty authority: never allowed
        ("http://user@/v1/token", "\0"),
    ],
)
def test_the_host_a_request_names(target: str, host: str) -> None:
    assert target_host({"Host": "from-header"}, target) == host


def test_no_host_header_and_an_origin_form_target_name_no_host() -> None:
    assert target_host({}, "/v1/token") == ""


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("http://localhost/v1/token", True),
        ("http://127.0.0.1:8721/v1/token?x=1", True),
        ("http://[::1]:8721/v1/token", True),
        ("http://evil.example/v1/token", False),
        ("http://evil.example:8721/v1/token", False),
        ("http://localhost.evil.example/v1/token", False),
        ("http://localhost:8721@evil.example/v1/token", False),
        ("http://localhost://evil.example/", False),
        ("http:///v1/token", False),
    ],
)
def test_an_absolute_target_wins_over_the_host_header_every_time(
    target: str, allowed: bool
) -> None:
    """RFC 9112: the authority of an absolute-form target is the host, whatever Host says, and
    an allowed Host remembered from earlier requests opens nothing for it."""
    guard = OriginGuard(ServerSettings())
    expected = None if allowed else HOST_REJECTION
    for _ in range(2):  # first worked out, then from memory
        assert guard.origin(OK, target) == expected
        assert guard.v1(OK, target) == expected
    fresh = OriginGuard(ServerSettings())  # nothing remembered yet
    assert fresh.v1(OK, target) == expected
    assert fresh.v1(OK) is None  # the Host header alone is allowed
    assert fresh.v1(OK, target) == expected
    evil = {**OK, "Host": "evil.example"}
    assert OriginGuard(ServerSettings()).v1(evil, target) == expected


def test_a_request_without_a_host_never_borrows_a_remembered_answer() -> None:
    """No Host header is "no host", refused, even right after an allowed Host of any
    spelling was remembered (here the configured name `xxxx`, sent as `XXXX`)."""
    guard = OriginGuard(ServerSettings(allowed_hosts=frozenset({"xxxx"})))
    assert guard.v1({"Host": "XXXX", "Metadata": "true"}) is None
    assert guard.v1({"Metadata": "true"}) == HOST_REJECTION
    assert guard.origin({"Metadata": "true"}) == HOST_REJECTION


def test_allowing_requests_without_a_host_opens_no_other_host() -> None:
    """allowed_hosts may list "" (HTTP/1.0 clients that send no Host): that answer,
    remembered, is never used for a request that does name a host."""
    guard = OriginGuard(ServerSettings(allowed_hosts=frozenset({"", "localhost"})))
    assert guard.v1({"Metadata": "true"}) is None
    assert guard.v1({"Host": "evil.example", "Metadata": "true"}) == HOST_REJECTION
    assert guard.v1({"Host": "localhost:1", "Metadata": "true"}) is None
