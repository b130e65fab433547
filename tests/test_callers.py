"""Caller identity and profile restrictions, through the real server: a unix-socket caller
outside every allowed uid and group is refused, its groups are the ones the kernel recorded
when it connected, both rules of a profile must hold, and the audit line names the caller
exactly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from broker.config.load import parse_settings
from broker.config.secret import Secret
from broker.http.callers import Caller, caller_of, may_use, read_peer_credentials
from tests.conftest import HEADERS, config_text, make_settings
from tests.hostile import Hostile
from tests.support import raw


def foreign_gid() -> int:
    """A group this process is not in (neither primary nor supplementary)."""
    mine = {os.getgid(), *os.getgroups()}
    return next(g for g in range(4242, 100_000) if g not in mine)


async def statuses(path, names) -> dict[str, int]:
    conn = aiohttp.UnixConnector(path=str(path))
    out = {}
    async with aiohttp.ClientSession(connector=conn) as s:
        for name in names:
            async with s.get(f"http://localhost/v1/token/{name}", headers=HEADERS) as r:
                out[name] = r.status
                body = await r.json()
                if r.status == 403:
                    assert body["error"]["code"] == "forbidden" and name not in json.dumps(body)
    return out


async def test_a_caller_outside_allowed_gids_is_refused(sandbox, secret, run_server, tmp_path):
    """allowed_gids alone: our group is served, a group we are not in is 403; a uid rule for
    another uid does not open a profile whose group we lack."""
    path = tmp_path / "b.sock"
    uid, gid, other = os.getuid(), os.getgid(), foreign_gid()
    profiles = f"""[profiles.ours]
allowed_gids = [{gid}]
[profiles.foreign]
allowed_gids = [{other}]
[profiles.either_uid]
allowed_uids = [{uid}]
allowed_gids = [{other}]
[profiles.either_gid]
allowed_uids = [{uid + 4242}]
allowed_gids = [{gid}]
[profiles.neither]
allowed_uids = [{uid + 4242}]
allowed_gids = [{other}]
"""
    await run_server(make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
    got = await statuses(path, ["ours", "foreign", "either_uid", "either_gid", "neither"])
    assert got == {
        "ours": 200,
        "foreign": 403,
        "either_uid": 200,
        "either_gid": 200,
        "neither": 403,
    }


async def test_an_access_key_and_a_uid_rule_must_both_hold(
    sandbox, secret, run_server, tmp_path, witness
):
    path = tmp_path / "b.sock"
    key = "access-key-" + secret[-12:]
    witness.secrets.add(key)
    (tmp_path / "key").write_text(key)
    profiles = f"""[profiles.both]
allowed_uids = [{os.getuid()}]
access_key_file = "{tmp_path}/key"
[profiles.keyonly]
access_key_file = "{tmp_path}/key"
"""
    addresses, _ = await run_server(
        make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}", "127.0.0.1:0"')
    )
    conn = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=conn) as s:
        for sent, expected in ((None, 403), ("wrong-key-value", 403), (key, 200)):
            headers = {**HEADERS, **({"X-Broker-Key": sent} if sent else {})}
            async with s.get("http://localhost/v1/token/both", headers=headers) as r:
                assert r.status == expected, sent
    async with aiohttp.ClientSession() as s:
        url = f"http://{addresses[1]}/v1/token"
        async with s.get(f"{url}/both", headers={**HEADERS, "X-Broker-Key": key}) as r:
            assert r.status == 403  # the right key, but a TCP caller has no uid
        async with s.get(f"{url}/keyonly", headers={**HEADERS, "X-Broker-Key": key}) as r:
            assert r.status == 200  # a key alone needs no unix socket
        async with s.get(f"http://{addresses[1]}/v1/profiles", headers=HEADERS) as r:
            assert (await r.json())["profiles"] == {}


async def test_unrestricted_profiles_serve_any_caller_and_are_listed(
    sandbox, secret, run_server, tmp_path
):
    path = tmp_path / "b.sock"
    addresses, _ = await run_server(
        make_settings(sandbox, secret, listen=f'"unix:{path}", "127.0.0.1:0"')
    )
    assert (await statuses(path, ["default"])) == {"default": 200}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{addresses[1]}/v1/profiles", headers=HEADERS) as r:
            assert list((await r.json())["profiles"]) == ["default"]
        msi = f"http://{addresses[1]}/msi/token?resource=https://api.partnercenter.microsoft.com"
        async with s.get(msi, headers={"Metadata": "true"}) as r:
            assert r.status != 403


async def test_the_audit_line_names_tcp_callers_by_address_and_port(sandbox, secret, run_server):
    addresses, logs = await run_server(
        make_settings(sandbox, secret, listen='"127.0.0.1:0", "[::1]:0"')
    )
    async with aiohttp.ClientSession() as s:
        for address in addresses:
            async with s.get(f"http://{address}/v1/token", headers=HEADERS) as r:
                assert r.status == 200
    await run_server.stop_all()
    callers = [
        json.loads(x)["caller"] for x in logs.getvalue().splitlines() if '"token_served"' in x
    ]
    assert len(callers) == 2
    assert re.fullmatch(r"127\.0\.0\.1:[1-9][0-9]*", callers[0]), callers[0]
    assert re.fullmatch(r"\[::1\]:[1-9][0-9]*", callers[1]), callers[1]


# -- the caller is named as the kernel recorded it at connect(), even after it hung up --------

MIRROR_ASK = (
    b"POST /generatetoken HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer caller-bearer\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
    b"Content-Length: 20\r\nConnection: close\r\n\r\ngrant_type=jwt_token"
)


async def test_a_caller_that_hung_up_mid_fetch_is_still_named_in_the_audit_line(
    secret, run_server, tmp_path
):
    """A unix-socket caller asks the mirror, hangs up while the upstream answer is pending; the
    answer then lands and the audit line of that request still names the caller by uid, gid
    and pid (decided when it connected), not as 'unknown'."""
    arrived, release = asyncio.Event(), asyncio.Event()
    async with Hostile() as upstream:

        async def partner(request: web.Request) -> web.Response:
            arrived.set()
            await release.wait()
            return web.json_response({"access_token": "opaque-mirror-token", "expires_in": 3600})

        upstream.partner = partner
        path = tmp_path / "b.sock"
        profiles = "[profiles.default]\nwarm = false\n"
        _, logs = await run_server(
            make_settings(upstream, secret, profiles=profiles, listen=f'"unix:{path}"')
        )
        _, writer = await asyncio.open_unix_connection(str(path))
        writer.write(MIRROR_ASK)
        await writer.drain()
        await arrived.wait()
        writer.close()  # hung up before the answer
        await writer.wait_closed()
        release.set()
        answer = await raw(f"unix:{path}", MIRROR_ASK)  # a second caller: served from cache
        assert answer.startswith(b"HTTP/1.1 200 ")
        await run_server.stop_all()
    served = [json.loads(x) for x in logs.getvalue().splitlines() if '"token_served"' in x]
    me = f"uid={os.getuid()} gid={os.getgid()} pid={os.getpid()}"
    assert sorted((line["cache"], line["caller"]) for line in served) == [
        ("hit", me),
        ("miss", me),
    ]
    assert upstream.calls["partner"] == 1


# -- a caller in many groups: every supplementary group it had at connect() counts -------------

GROUP_CALLER = r"""
import os, socket, sys
path, first, count, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
os.setgroups(list(range(first, first + count)))
statuses = []
for name in names:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(f"GET /v1/token/{name} HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n"
              "Connection: close\r\n\r\n".encode())
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    statuses.append(answer.split(b" ", 2)[1].decode() if answer else "closed")
    s.close()
print(" ".join(statuses))
"""


async def ask_in_groups(path, first: int, count: int, names: list[str]) -> list[str]:
    """Statuses a child process in supplementary groups first..first+count-1 gets for
    /v1/token/NAME, one connection each. Needs root (setgroups)."""
    assert os.geteuid() == 0, "this test sets a child's groups: run the suite as root"
    assert not {os.getgid(), *os.getgroups()} & set(range(first, first + count + 1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GROUP_CALLER,
        str(path),
        str(first),
        str(count),
        *names,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode().split()


def group_profiles(*gids: int) -> str:
    return "".join(f"[profiles.g{g}]\nallowed_gids = [{g}]\nwarm = false\n" for g in gids)


async def test_a_caller_in_64_groups_is_known_by_every_one_of_them(
    sandbox, secret, run_server, tmp_path
):
    """SO_PEERGROUPS lists the supplementary groups: in 64 of them (as many as the first
    read holds), the first and the last each open their profile; a group it is not in
    does not."""
    path = tmp_path / "b.sock"
    profiles = group_profiles(5000, 5063, 5064)
    await run_server(make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
    got = await ask_in_groups(path, 5000, 64, ["g5000", "g5063", "g5064"])
    assert got == ["200", "200", "403"]


async def test_a_caller_in_more_groups_than_the_first_read_holds_is_known_by_all_of_them(
    sandbox, secret, run_server, tmp_path
):
    """In 100 supplementary groups the kernel refuses the first 64-group read (ERANGE); the
    second, larger read gets them all: the first and the last each open their profile, and a
    group the caller is not in still opens nothing."""
    path = tmp_path / "b.sock"
    uid, gid = os.getuid(), os.getgid()
    profiles = (
        f"[profiles.primary]\nallowed_gids = [{gid}]\nwarm = false\n"
        f"[profiles.byuid]\nallowed_uids = [{uid}]\nwarm = false\n"
        + group_profiles(5000, 5099, 5100)
    )
    await run_server(make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
    got = await ask_in_groups(path, 5000, 100, ["primary", "byuid", "g5000", "g5099", "g5100"])
    assert got == ["200", "200", "200", "200", "403"]


async def test_a_caller_in_more_than_256_groups_is_known_by_uid_and_primary_group_only(
    sandbox, secret, run_server, tmp_path
):
    """Past the 256 groups CPython's getsockopt can read, the supplementary groups are not
    known: a profile open to one of them refuses (fails closed); uid and primary group still
    count."""
    path = tmp_path / "b.sock"
    uid, gid = os.getuid(), os.getgid()
    profiles = (
        f"[profiles.primary]\nallowed_gids = [{gid}]\nwarm = false\n"
        f"[profiles.byuid]\nallowed_uids = [{uid}]\nwarm = false\n" + group_profiles(5000)
    )
    await run_server(make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
    got = await ask_in_groups(path, 5000, 300, ["primary", "byuid", "g5000"])
    assert got == ["200", "200", "403"]


# -- groups are the ones the kernel recorded at connect(), whoever holds the pid later ---------


GROUP = 4242  # a group the test process is not in

# A caller in a child process: it sets its supplementary groups, connects, then (per mode)
# changes them and asks twice more on the same connection. Prints the three statuses.
CALLER = r"""
import os, socket, sys
path, group, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.setgroups([group] if mode == "leaves" else [])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
def ask():
    s.sendall(b"GET /v1/token/grp HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\n\r\n")
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    return status
first = ask()
# After connect(): the process with this pid now is (or no longer is) in the group, as a
# process that took over the pid of an exited one would be.
os.setgroups([group] if mode == "joins" else [])
print(first, ask(), ask())
"""


async def ask_as_child(path, mode: str) -> list[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CALLER, str(path), str(GROUP), mode, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return [int(x) for x in out.split()]


async def test_groups_come_from_connect_time_not_from_the_pid(
    sandbox, secret, run_server, tmp_path
):
    """allowed_gids: a caller outside the group at connect() stays refused after the process
    holding its pid joins the group (the PID-reuse bypass); a caller inside the group at
    connect() (SO_PEERGROUPS) stays served after it leaves. Needs root for setgroups."""
    assert os.geteuid() == 0, "this attack test changes a child's groups: run the suite as root"
    assert GROUP not in os.getgroups() and os.getgid() != GROUP
    path = tmp_path / "b.sock"
    profiles = f"[profiles.grp]\nallowed_gids = [{GROUP}]\n"
    await run_server(make_settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
    assert await ask_as_child(path, "joins") == [403, 403, 403]
    assert await ask_as_child(path, "leaves") == [200, 200, 200]


# -- an access key is never presumed ------------------------------------------------------------


class _Nowhere:  # an upstream no test here calls: may_use only reads the profile
    url = "http://127.0.0.1:9"


PROFILE = parse_settings(
    config_text(_Nowhere()), env={"TEST_CLIENT_SECRET": "client-secret-value"}
).profiles["default"]


@pytest.mark.parametrize("configured", ["XXXX", "x", "access-key-value"])
def test_a_request_without_a_key_header_never_matches_the_profiles_key(configured: str) -> None:
    profile = replace(PROFILE, access_key=Secret(configured))
    local = Caller(pid=1, uid=os.getuid(), gid=os.getgid(), groups=frozenset({os.getgid()}))
    for caller in (Caller(address="127.0.0.1:5000"), local):
        assert not may_use(profile, caller, None)
        assert not may_use(profile, caller, "")
        assert not may_use(profile, caller, configured + "x")
        assert may_use(profile, caller, configured)


async def test_a_tcp_caller_is_named_by_its_address(sandbox, secret, start_broker):
    """A TCP caller (no peer credentials to read) is named in the audit line by its address,
    worked out from the request's transport."""
    b = await start_broker(make_settings(sandbox, secret))
    r = await b.get("/v1/token")
    assert r.status == 200
    await r.read()
    await b.client.close()  # its audit lines are written out
    callers = [
        json.loads(x)["caller"] for x in b.logs.getvalue().splitlines() if '"token_served"' in x
    ]
    assert len(callers) == 1
    assert re.fullmatch(r"127\.0\.0\.1:[1-9][0-9]*", callers[0]), callers[0]


class _Gone:
    """A transport that has lost its peer: every extra is None (asyncio's own after a close)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def test_a_caller_without_a_transport_or_a_peer_is_unknown_not_a_crash() -> None:
    """A request whose connection is already gone (no transport, or no peer address) is an
    unknown caller: it gets no uid, no groups, and no profile that needs them."""
    assert read_peer_credentials(None) is None
    assert caller_of(None) == Caller()
    assert caller_of(_Gone()) == Caller()
    assert caller_of(_Gone()).description == "unknown"
