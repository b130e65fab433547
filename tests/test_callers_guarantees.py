"""Caller identity and profile restrictions, through the real server: a unix-socket caller
outside every allowed uid and group is refused, both rules of a profile must hold, and the
audit line names the caller exactly."""

from __future__ import annotations

import json
import os
import re

import aiohttp

from tests.conftest import HEADERS
from tests.test_security import settings


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
    await run_server(settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}"'))
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
        settings(sandbox, secret, profiles=profiles, listen=f'"unix:{path}", "127.0.0.1:0"')
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
        settings(sandbox, secret, listen=f'"unix:{path}", "127.0.0.1:0"')
    )
    assert (await statuses(path, ["default"])) == {"default": 200}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{addresses[1]}/v1/profiles", headers=HEADERS) as r:
            assert list((await r.json())["profiles"]) == ["default"]
        msi = f"http://{addresses[1]}/msi/token?resource=https://api.partnercenter.microsoft.com"
        async with s.get(msi, headers={"Metadata": "true"}) as r:
            assert r.status != 403


async def test_the_audit_line_names_tcp_callers_by_address_and_port(sandbox, secret, run_server):
    addresses, logs = await run_server(settings(sandbox, secret, listen='"127.0.0.1:0", "[::1]:0"'))
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
