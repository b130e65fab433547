"""The IMDS route, `GET /metadata/identity/oauth2/token`, off unless `[msi] imds = true`:
raw protocol (headers, answer and error shapes, selectors, refresh by hash), and the real
azure-identity (sync and aio) and MSAL clients reaching it through
AZURE_POD_IDENTITY_AUTHORITY_HOST."""

from __future__ import annotations

import asyncio
import json

import msal
import pytest
import requests
from azure.identity import ManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID
from tests.support import AZURE_ENV, msi_settings, sha256_hex, status_and_json

PATH = "/metadata/identity/oauth2/token"
RESOURCE = "https://api.partnercenter.microsoft.com"
OK = {"api-version": "2018-02-01", "resource": RESOURCE}
META = {"Metadata": "true"}


async def _start(start_broker, sandbox, secret, tmp_path, witness, *, imds=True, profiles=None):
    extra = "imds = true" if imds else ""
    b = await start_broker(
        msi_settings(sandbox, secret, tmp_path, profiles=profiles, msi_extra=extra)
    )
    witness.secrets.add((tmp_path / "identity-header").read_text().strip())
    await b.broker.entry("default", "aad").get()
    return b


async def _imds(b, params=None, headers=None):
    r = await b.client.get(
        PATH, params=OK if params is None else params, headers=META if headers is None else headers
    )
    return r.status, await r.json()


@pytest.fixture
def pod_identity(monkeypatch):
    """No App Service, Arc or other variable: the SDKs speak IMDS, to the broker."""
    for name in (*AZURE_ENV, "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)

    def point(b) -> None:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", b.client.base)

    return point


async def test_off_unless_configured(start_broker, sandbox, secret, tmp_path, witness):
    b = await _start(start_broker, sandbox, secret, tmp_path, witness, imds=False)
    status, body = await _imds(b)
    assert status == 404 and "access_token" not in body


async def test_answer_shape_and_one_cache(
    start_broker, sandbox, secret, tmp_path, witness, clock=None
):
    """IMDS's answer: times as digit strings, resource echoed; the token of /msi/token's and
    /v1's cache, no further Azure AD call."""
    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    status, body = await _imds(b, {**OK, "resource": RESOURCE + "/"})
    assert status == 200
    assert set(body) == {
        "access_token", "client_id", "expires_in", "expires_on", "ext_expires_in",
        "not_before", "resource", "token_type",
    }  # fmt: skip
    for key in ("expires_in", "expires_on", "ext_expires_in", "not_before"):
        assert isinstance(body[key], str) and body[key].isdigit(), key
    assert int(body["expires_on"]) > int(body["not_before"])
    assert 420 <= int(body["expires_in"]) <= 3599
    assert body["resource"] == RESOURCE + "/" and body["client_id"] == CLIENT_ID
    assert body["token_type"] == "Bearer"
    v1 = await (await b.get("/v1/token?kind=aad")).json()
    assert body["access_token"] == v1["access_token"]
    assert sandbox.state.counts["aad"] == 1


async def test_refusals_in_imds_shape(start_broker, sandbox, secret, tmp_path, witness):
    """No `Metadata: true`: 400 as IMDS answers; proxied or foreign Host: 403; an unknown
    api-version, App Service's selector spellings, an unknown parameter: 400 saying so."""
    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    cases = [
        ({}, OK, 400, "Required metadata header not specified"),
        ({"Metadata": "false"}, OK, 400, "Required metadata header not specified"),
        ({**META, "X-Forwarded-For": "10.0.0.1"}, OK, 403, "proxy"),
        ({**META, "Forwarded": "for=10.0.0.1"}, OK, 403, "proxy"),
        ({**META, "Host": "evil.example"}, OK, 403, "Host"),
        (META, {**OK, "api-version": "2017-09-01"}, 400, "2018-02-01"),
        (META, {"resource": RESOURCE}, 400, "api-version"),
        (META, {**OK, "api-version": "NaN"}, 400, "2018-02-01"),
        (META, {**OK, "api-version": "Infinity"}, 400, "2018-02-01"),
        (META, {**OK, "principal_id": "x"}, 400, "object_id"),
        (META, {**OK, "clientid": "x"}, 400, "client_id"),
        (META, {**OK, "bypass": "1"}, 400, "bypass"),
        (META, {"api-version": "2018-02-01"}, 400, "resource"),
        (META, {**OK, "resource": "https://vault.azure.net"}, 400, "scopes"),
        (META, {**OK, "client_id": "nobody"}, 400, "no identity"),
    ]
    for headers, params, status, said in cases:
        got, body = await _imds(b, params, headers)
        assert got == status and set(body) == {"error", "error_description"}, (headers, params)
        assert said in body["error_description"], (said, body)
    status, _ = await _imds(b, {**OK, "api-version": "2019-08-01"})
    assert status == 200
    assert sandbox.state.counts["aad"] == 1


async def test_selectors(start_broker, sandbox, secret, tmp_path, witness):
    """client_id, object_id, msi_res_id and mi_res_id pick the profile; a restricted one is
    answered as an unknown identity, its token untouched."""
    other = "99999999-0000-4000-8000-000000000009"
    sandbox.state.register("contoso.onmicrosoft.com", other, client_secret=secret)
    rid = "/subscriptions/s/resourceGroups/g/providers/x/second"
    profiles = (
        f'[profiles.default]\n[profiles.second]\nclient_id = "{other}"\nobject_id = "obj-2"\n'
        f'resource_id = "{rid}"\n'
        '[profiles.locked]\nobject_id = "lock"\naccess_key = "k-123456789"\n'
    )
    b = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles=profiles)
    witness.secrets.add("k-123456789")
    for param, value in (
        ("client_id", other),
        ("object_id", "OBJ-2"),
        ("msi_res_id", rid),
        ("mi_res_id", rid),
    ):
        status, body = await _imds(b, {**OK, param: value})
        assert status == 200 and body["client_id"] == other, param
    status, body = await _imds(b, {**OK, "client_id": other, "object_id": "obj-2"})
    assert status == 400
    locked = b.broker.entry("locked", "aad")
    token, _ = await locked.get()
    calls = sandbox.state.counts["aad"]
    status, body = await _imds(
        b, {**OK, "object_id": "lock", "token_sha256_to_refresh": sha256_hex(token.value)}
    )
    assert (
        status == 400
        and body["error_description"] == "no identity with object_id 'lock' is served here"
    )
    assert locked.token is token and sandbox.state.counts["aad"] == calls


async def test_refresh_by_hash(start_broker, sandbox, secret, tmp_path, witness):
    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    _, first = await _imds(b)
    status, second = await _imds(
        b, {**OK, "token_sha256_to_refresh": sha256_hex(first["access_token"])}
    )
    assert status == 200 and second["access_token"] != first["access_token"]
    _, third = await _imds(b, {**OK, "token_sha256_to_refresh": sha256_hex(first["access_token"])})
    assert third["access_token"] == second["access_token"]
    assert sandbox.state.counts["aad"] == 2


async def test_azure_identity_through_pod_identity_host(
    start_broker, sandbox, secret, tmp_path, witness, pod_identity
):
    """azure-identity's ManagedIdentityCredential (sync and aio), no App Service variable:
    IMDS at AZURE_POD_IDENTITY_AUTHORITY_HOST; 50 calls, one Azure AD call."""
    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    pod_identity(b)
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]

    def fifty() -> set[str]:
        credential = ManagedIdentityCredential()
        return {credential.get_token(RESOURCE + "/.default").token for _ in range(50)}

    assert await asyncio.get_running_loop().run_in_executor(None, fifty) == {expected}
    credential = AsyncManagedIdentityCredential()
    try:
        assert (await credential.get_token(RESOURCE + "/.default")).token == expected
    finally:
        await credential.close()
    assert sandbox.state.counts["aad"] == 1


async def test_msal_through_pod_identity_host(
    start_broker, sandbox, secret, tmp_path, witness, pod_identity
):
    """MSAL's ManagedIdentityClient, system-assigned and by client id, speaks IMDS here."""
    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    pod_identity(b)
    expected = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]

    def acquire(identity) -> dict:
        client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
        return client.acquire_token_for_client(resource=RESOURCE)

    run = asyncio.get_running_loop().run_in_executor
    for identity in (
        msal.SystemAssignedManagedIdentity(),
        msal.UserAssignedManagedIdentity(client_id=CLIENT_ID),
    ):
        result = await run(None, acquire, identity)
        assert result.get("access_token") == expected, result.get("error_description")
    assert sandbox.state.counts["aad"] == 1


async def test_hostile_queries_are_400s_never_500s(
    start_broker, sandbox, secret, tmp_path, witness
):
    """Raw requests on both routes: invalid UTF-8, NUL, huge values, repeated parameters,
    nested-looking and NaN values. Each a 400 in the route's shape, quoting nothing of it, and
    no Azure AD call."""
    from tests.support import raw, status_and_json

    b = await _start(start_broker, sandbox, secret, tmp_path, witness)
    header = (tmp_path / "identity-header").read_text().strip()
    address = b.client.base.removeprefix("http://")
    evil = [
        "resource=%FF%FE",
        "resource=https%3A%2F%2Fapi.partnercenter.microsoft.com%00",
        f"resource={RESOURCE}&token_sha256_to_refresh=%FF" + "a" * 63,
        f"resource={RESOURCE}&token_sha256_to_refresh=NaN",
        f"resource={RESOURCE}&xms_cc=" + "cp1," * 500,
        f"resource={RESOURCE}&xms_cc=%FF",
        f"resource={RESOURCE}&client_id=%FF%00",
        f"resource={RESOURCE}&resource={RESOURCE}",
        f"resource={RESOURCE}&%FF=1",
        f"resource={RESOURCE}&client_id[]=x",
        "resource=" + "x" * 3000,
        f"resource={RESOURCE}&api-version=NaN",  # a second api-version, NaN
        f"resource={RESOURCE}&api-version=%FF",
        f"resource={RESOURCE}&token_sha256_to_refresh=" + "a" * 5000,
    ]
    routes = {
        "/msi/token?api-version=2019-08-01&": f"X-IDENTITY-HEADER: {header}",
        f"{PATH}?api-version=2018-02-01&": "Metadata: true",
    }
    for prefix, extra in routes.items():
        for query in evil:
            request = f"GET {prefix}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
            answer = await raw(address, (request + "Connection: close\r\n\r\n").encode())
            status, body = status_and_json(answer)
            assert status == 400, (prefix, query, answer[:300])
            text = json.dumps(body)
            assert "cp1,cp1,cp1" not in text and "xxxxxxxx" not in text and "Traceback" not in text
    assert sandbox.state.counts["aad"] == 1


def test_check_config_says_who_reaches_the_route(sandbox, secret, tmp_path, capsys, monkeypatch):
    from broker.cli.main import main
    from tests.conftest import config_text

    config = tmp_path / "broker.toml"
    base = config_text(sandbox) + f'[msi]\nidentity_header_file = "{tmp_path}/hdr"\n'
    (tmp_path / "hdr").write_text("configured-identity-header\n")
    monkeypatch.setenv("TEST_CLIENT_SECRET", secret)
    for extra, line in (("", "imds:            off"), ("imds = true\n", "no secret header")):
        config.write_text(base + extra)
        assert main(["check-config", "--offline", "--config", str(config)]) == 0
        assert line in capsys.readouterr().out


async def test_tokens_keep_min_remaining(fake_sandbox, secret, start_broker, tmp_path, clock):
    """[msi] min_remaining holds on this route too: with under 420 s left, a new token."""
    settings = msi_settings(fake_sandbox, secret, tmp_path, msi_extra="imds = true")
    b = await start_broker(settings, clock=clock)
    first = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    b.broker.entry("default", "aad").retire()  # no refresh ahead: callers decide here
    clock.advance(3599 - 400)
    status, body = await _imds(b)
    assert status == 200 and body["access_token"] != first
    assert int(body["expires_in"]) >= 420


def test_msi_env_imds_prints_the_authority_host(sandbox, secret, tmp_path, capsys, monkeypatch):
    """`msi-env --imds`: AZURE_POD_IDENTITY_AUTHORITY_HOST (the listener, no secret), and
    AZURE_CLIENT_ID for another profile; refused while the route is off, or with --tenant."""
    from broker.cli.main import main
    from tests.conftest import config_text

    config = tmp_path / "broker.toml"
    text = config_text(sandbox, profiles="[profiles.default]\n[profiles.b]\nclient_id = 'b-id'\n")
    base = text.replace('listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:8799"]')
    base += f'[msi]\nidentity_header_file = "{tmp_path}/hdr"\n'
    (tmp_path / "hdr").write_text("configured-identity-header\n")
    monkeypatch.setenv("TEST_CLIENT_SECRET", secret)
    config.write_text(base)
    assert main(["msi-env", "--imds", "--config", str(config)]) == 2
    assert "imds = true" in capsys.readouterr().err
    config.write_text(base + "imds = true\n")
    assert main(["msi-env", "--imds", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["export AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:8799"]
    assert "configured-identity-header" not in out
    assert main(["msi-env", "b", "--imds", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "export AZURE_CLIENT_ID=b-id"
    assert main(["msi-env", "--imds", "--tenant", "x.example", "--config", str(config)]) == 2


async def test_a_restricted_profile_is_invisible_to_selectors(
    start_broker, sandbox, secret, tmp_path, witness
):
    """A local process reaching IMDS (no secret) learns nothing of a restricted profile: a
    client_id it shares with the default profile (one app registration, as the answer's
    client_id shows) selects the default one instead of a 400 naming the restricted profile;
    the restricted profile's object_id is answered as an object_id that does not exist."""
    profiles = (
        "[profiles.default]\n[profiles.payroll-secret]\nobject_id = 'lock'\n"
        "access_key = 'k-123456789'\n"
    )
    b = await _start(start_broker, sandbox, secret, tmp_path, witness, profiles=profiles)
    witness.secrets.add("k-123456789")
    status, body = await _imds(b, {**OK, "client_id": CLIENT_ID})
    assert status == 200 and "payroll" not in json.dumps(body)
    assert body["access_token"] == b.broker.entry("default", "aad").token.value
    locked = await _imds(b, {**OK, "object_id": "lock"})
    absent = await _imds(b, {**OK, "object_id": "lock2"})
    assert locked[0] == absent[0] == 400
    assert locked[1]["error_description"] == absent[1]["error_description"].replace("lock2", "lock")


# Run by `unshare -rn` (an unprivileged user namespace owning a new network namespace, as a
# pod sandbox's): the sidecar's init step, and the sockets handed back over a unix socket.
# Sockets keep their namespace, so this process listens and connects inside it.
_POD = """
import socket, subprocess, sys
for step in (["link", "set", "lo", "up"], ["addr", "add", "169.254.169.254/32", "dev", "lo"],
             ["addr", "add", "10.9.9.9/32", "dev", "lo"]):
    subprocess.run(["ip", *step], check=True)
listener = socket.socket()
listener.bind(("169.254.169.254", 80))
listener.listen()
pod, outside = socket.socket(), socket.socket()
outside.bind(("10.9.9.9", 0))
back = socket.socket(socket.AF_UNIX)
back.connect(sys.argv[1])
socket.send_fds(back, [b"fds"], [listener.fileno(), pod.fileno(), outside.fileno()])
"""


async def test_a_caller_from_outside_the_pod_is_refused(
    start_broker, sandbox, secret, tmp_path, witness
):
    """The sidecar's listener on 169.254.169.254:80 (on the pod's lo): a container of the pod
    reaches it from 169.254.169.254 itself, and gets a token. Linux also accepts a packet for
    that address arriving on the pod's other interfaces, so a neighbour on the pod's network
    (or any host, for a 0.0.0.0 listener with allow_remote) could ask too, from an address of
    its own (here 10.9.9.9): refused, 403, no token, no Azure AD call."""
    import socket
    import sys

    from tests.conftest import config_text

    home = socket.socket(socket.AF_UNIX)
    home.bind(str(tmp_path / "fds.sock"))
    home.listen()
    child = await asyncio.create_subprocess_exec(
        "unshare", "-rn", sys.executable, "-c", _POD, str(tmp_path / "fds.sock")
    )
    assert await asyncio.wait_for(child.wait(), 30) == 0  # its sockets are queued on `home`
    conn, _ = home.accept()
    _, fds, _, _ = socket.recv_fds(conn, 16, 3)
    conn.close()
    home.close()
    listener, pod, outside = (socket.socket(fileno=fd) for fd in fds)
    text = config_text(sandbox, server='allowed_hosts = ["169.254.169.254"]') + (
        f'\n[msi]\nimds = true\ngenerated_header_file = "{tmp_path}/identity-header"\n'
    )
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}), sock=listener)
    await b.broker.entry("default", "aad").get()
    loop = asyncio.get_running_loop()

    async def ask(sock: socket.socket) -> tuple[int, dict]:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("169.254.169.254", 80))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET {PATH}?api-version=2018-02-01&resource={RESOURCE} HTTP/1.1\r\n"
            "Host: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        writer.close()
        return status_and_json(answer)

    status, body = await ask(pod)
    assert status == 200 and body["access_token"]
    status, body = await ask(outside)
    assert status == 403 and "access_token" not in body, body
    assert "this host" in body["error_description"]
    assert sandbox.state.counts["aad"] == 1


@pytest.mark.parametrize(
    ("peer", "listener", "here"),
    [
        ("", "/run/broker.sock", True),  # a unix socket: whoever may open it
        (("127.0.0.1", 5), ("127.0.0.1", 80), True),
        (("192.0.2.7", 5), ("127.0.0.1", 80), True),  # a loopback listener: only this host
        (("169.254.169.254", 5), ("169.254.169.254", 80), True),  # a container of the pod
        (("10.1.2.3", 5), ("169.254.169.254", 80), False),  # a neighbour through the pod
        (("10.1.2.3", 5), ("10.1.2.4", 8721), False),  # another host, allow_remote
        (("::ffff:127.0.0.1", 5, 0, 0), ("::ffff:10.0.0.1", 80, 0, 0), True),
        (("::ffff:10.1.2.3", 5, 0, 0), ("::ffff:10.0.0.1", 80, 0, 0), False),
        (("fe80::1%eth0", 5, 0, 2), ("fe80::2%eth0", 80, 0, 2), False),
        (None, ("169.254.169.254", 80), False),  # the connection is gone
    ],
)
def test_who_is_on_this_host(peer, listener, here):
    from broker.http.imds import from_here

    assert from_here(peer, listener) is here
