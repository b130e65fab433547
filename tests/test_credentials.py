"""Every credential type obtains a token from the sandbox, checked the way Azure AD checks it;
a credential file that would block (a FIFO) never blocks the daemon."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import aiohttp
import jwt
import pytest

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID, HEADERS, TENANT, FakeClock, config_text
from tests.support import make_certificate, settings_for


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
async def test_certificate_credential(sandbox, start_broker, tmp_path: Path, algorithm: str):
    """A client assertion signed with the certificate key (x5t#S256 header) gets a token;
    the sandbox checked signature, thumbprint, audience and times."""
    pem, cert = make_certificate()
    sandbox.state.apps[CLIENT_ID].certificate_pem = cert
    (tmp_path / "app.pem").write_bytes(pem)
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "certificate"
certificate_file = "{tmp_path}/app.pem"
signing_algorithm = "{algorithm}"
""",
    )
    b = await start_broker(settings)
    r = await b.get("/v1/token")
    assert r.status == 200, await r.text()
    call = next(c for c in sandbox.state.calls if c.endpoint == "aad")
    assert call.form["client_assertion_type"].endswith("jwt-bearer") and call.status == 200
    assert "client_secret" not in call.form


async def test_certificate_not_registered_is_refused(sandbox, start_broker, tmp_path: Path):
    """An assertion signed by another certificate: 502 with Azure AD's 401."""
    pem, _ = make_certificate()
    _, other = make_certificate()
    sandbox.state.apps[CLIENT_ID].certificate_pem = other
    (tmp_path / "app.pem").write_bytes(pem)
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "certificate"
certificate_file = "{tmp_path}/app.pem"
warm = false
""",
    )
    b = await start_broker(settings)
    r = await b.get("/v1/token")
    error = (await r.json())["error"]
    assert (
        r.status == 502 and error["upstream_status"] == 401 and "AADSTS700027" in error["message"]
    )


async def test_encrypted_certificate_key_with_password_file(sandbox, start_broker, tmp_path):
    """An encrypted key is opened with certificate_password_file."""
    pem, cert = make_certificate(password=b"pem-password-123")
    sandbox.state.apps[CLIENT_ID].certificate_pem = cert
    (tmp_path / "app.pem").write_bytes(pem)
    (tmp_path / "pw").write_text("pem-password-123\n")
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "certificate"
certificate_file = "{tmp_path}/app.pem"
certificate_password_file = "{tmp_path}/pw"
""",
    )
    b = await start_broker(settings)
    assert (await b.get("/v1/token")).status == 200


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a pem", "not a PEM file (no -----BEGIN line)"),
        ("encrypted", "the private key is encrypted: set certificate_password_file"),
        ("key only", "no certificate in the PEM file"),
    ],
)
def test_bad_certificate_files_are_config_errors(sandbox, tmp_path: Path, content, problem):
    """check-config catches an unusable PEM: garbage, an encrypted key without password, no cert."""
    if content == "encrypted":
        content, _ = make_certificate(password=b"pw-pw-pw-pw")
    elif content == "key only":
        pem, _ = make_certificate()
        content = pem.split(b"-----BEGIN CERTIFICATE-----")[0]
    (tmp_path / "app.pem").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        settings_for(
            sandbox,
            f"""[profiles.default]
credential = "certificate"
certificate_file = "{tmp_path}/app.pem"
""",
        )
    assert problem in str(info.value) and "profiles.default.certificate_file" in str(info.value)


async def test_refresh_token_is_rotated_and_written_back(sandbox, start_broker, tmp_path: Path):
    """The refresh_token grant: the rotated token is on disk after the refresh, the file keeps
    its mode, and the next refresh (old token now revoked) uses the new one."""
    sandbox.state.revoke_rotated = True
    app = sandbox.state.register(TENANT, "22222222-0000-4000-8000-000000000001")  # public client
    first = sandbox.state.issue_refresh_token(app)
    path = tmp_path / "refresh-token"
    path.write_text(first + "\n")
    os.chmod(path, 0o640)
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "refresh_token"
client_id = "{app.client_id}"
refresh_token_file = "{path}"
""",
    )
    b = await start_broker(settings)
    assert (await b.get("/v1/token")).status == 200
    second = path.read_text().strip()
    assert second != first and second in app.refresh_tokens and first not in app.refresh_tokens
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    forced = await b.client.post("/v1/token/default/refresh", headers=HEADERS)
    assert forced.status == 200, await forced.text()
    third = path.read_text().strip()
    assert third not in (first, second)
    assert not list(tmp_path.glob(".pc-token-broker-*"))  # no temporary file left behind
    logs = b.logs.getvalue()
    assert first not in logs and second not in logs and third not in logs


async def test_refresh_token_of_a_confidential_client_sends_its_secret(
    sandbox, secret, start_broker, tmp_path
):
    """A confidential app redeems its refresh token with its client secret too."""
    token = sandbox.state.issue_refresh_token(sandbox.state.apps[CLIENT_ID])
    (tmp_path / "rt").write_text(token)
    text = config_text(
        sandbox,
        profiles=f"""[profiles.default]
credential = "refresh_token"
refresh_token_file = "{tmp_path}/rt"
""",
    )
    b = await start_broker(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    assert (await b.get("/v1/token")).status == 200


async def test_federated_token_file_is_reread_on_each_refresh(sandbox, start_broker, tmp_path):
    """Workload identity: the projected token is the assertion; a rotated file is used on the
    next refresh."""
    subject = "system:serviceaccount:partner-tools:broker"
    sandbox.state.apps[CLIENT_ID].federated_subject = subject
    path = tmp_path / "azure-identity-token"
    first = sandbox.state.mint_federated(subject)
    path.write_text(first)
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "federated_token_file"
federated_token_file = "{path}"
""",
    )
    b = await start_broker(settings)
    assert (await b.get("/v1/token")).status == 200
    second = sandbox.state.mint_federated(subject)
    path.write_text(second)  # the kubelet rotated it
    assert (await b.client.post("/v1/token/default/refresh", headers=HEADERS)).status == 200
    used = [c.form["assertion_jti"] for c in sandbox.state.calls if c.endpoint == "aad"]
    jtis = [jwt.decode(t, options={"verify_signature": False})["jti"] for t in (first, second)]
    assert used == jtis


async def test_federated_token_for_another_subject_is_refused(sandbox, start_broker, tmp_path):
    """A token for a subject with no federated credential: 502 with Azure AD's 400."""
    sandbox.state.apps[CLIENT_ID].federated_subject = "system:serviceaccount:a:b"
    (tmp_path / "t").write_text(sandbox.state.mint_federated("system:serviceaccount:x:y"))
    settings = settings_for(
        sandbox,
        f"""[profiles.default]
credential = "federated_token_file"
federated_token_file = "{tmp_path}/t"
warm = false
""",
    )
    b = await start_broker(settings)
    r = await b.get("/v1/token")
    error = (await r.json())["error"]
    assert r.status == 502 and error["upstream_status"] == 400 and "AADSTS70021" in error["message"]


async def test_static_token_file_needs_no_azure_ad(
    fake_sandbox, start_broker, tmp_path, clock: FakeClock
):
    """A token placed by another system is served as the aad token and exchanged at Partner
    Center, with no Azure AD call; a new file is picked up within the poll interval."""
    claims = {"aud": "https://api.partnercenter.microsoft.com", "tid": TENANT, "appid": "x"}
    first = fake_sandbox.state.mint(claims, 3600)
    path = tmp_path / "aad-token"
    path.write_text(first)
    settings = settings_for(
        fake_sandbox,
        f"""[profiles.default]
credential = "static_token_file"
static_token_file = "{path}"
""",
    )
    b = await start_broker(settings, clock=clock)
    aad = await (await b.get("/v1/token?kind=aad")).json()
    assert aad["access_token"] == first
    assert (await b.get("/v1/token")).status == 200
    second = fake_sandbox.state.mint(claims, 3600)
    path.write_text(second)
    clock.advance(10)  # the poll interval for static files
    entry = b.broker.entry("default", "aad")
    if entry.flight:
        await entry.flight
    aad = await (await b.get("/v1/token?kind=aad")).json()
    assert aad["access_token"] == second
    assert fake_sandbox.state.counts["aad"] == 0


async def test_expired_static_token_is_a_clean_503(fake_sandbox, start_broker, tmp_path):
    """An expired token in the static file is never served: 503 credential_unavailable."""
    path = tmp_path / "aad-token"
    path.write_text(fake_sandbox.state.mint({"aud": "x"}, -10))
    settings = settings_for(
        fake_sandbox,
        f"""[profiles.default]
credential = "static_token_file"
static_token_file = "{path}"
warm = false
""",
    )
    b = await start_broker(settings)
    r = await b.get("/v1/token?kind=aad")
    error = (await r.json())["error"]
    assert r.status == 503 and error["code"] == "credential_unavailable"
    assert "already expired" in error["message"]


def test_keys_of_another_credential_are_refused(sandbox, tmp_path: Path) -> None:
    """A profile setting a key its credential does not use is a config error naming the key."""
    with pytest.raises(ConfigError) as info:
        settings_for(
            sandbox,
            f"""[profiles.default]
credential = "federated_token_file"
federated_token_file = "{tmp_path}/t"
certificate_file = "/x.pem"
""",
        )
    assert "profiles.default.certificate_file: not used by credential 'federated_token_file'" in (
        str(info.value)
    )


async def test_a_fifo_as_federated_token_file_does_not_hang_the_daemon(
    sandbox, secret, run_server, tmp_path
):
    """A FIFO as `federated_token_file` used to block the event loop in open() until a writer
    came: the daemon answered nothing. Now the refresh fails (503 credential_unavailable) and
    /healthz answers at once. (A writer is sent after 3 s so the old code fails, not hangs.)"""
    fifo = tmp_path / "federated-token"
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock() -> None:  # only matters for a broker that blocks on the FIFO
        if done.wait(3):
            return
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                done.wait(0.05)
                continue
            os.write(fd, b"not-a-token")
            os.close(fd)
            return

    threading.Thread(target=unblock, daemon=True).start()
    profiles = (
        '[profiles.default]\nwarm = false\ncredential = "federated_token_file"\n'
        f'federated_token_file = "{fifo}"\n'
    )
    text = config_text(sandbox, profiles=profiles).replace(
        'client_secret_env = "TEST_CLIENT_SECRET"\n', ""
    )
    (address,), _ = await run_server(parse_settings(text, env={}))
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as s:
            token = asyncio.ensure_future(s.get(f"http://{address}/v1/token", headers=HEADERS))
            started = loop.time()
            async with s.get(f"http://{address}/healthz") as r:
                assert r.status == 200
            waited = loop.time() - started
            response = await token
            body = await response.json()
    finally:
        done.set()
    assert waited < 1.0, f"/healthz waited {waited:.2f} s"
    assert response.status == 503 and body["error"]["code"] == "credential_unavailable"


async def test_a_refresh_token_file_not_utf8_or_oversized_is_a_503_naming_the_file(
    sandbox, start_broker, tmp_path: Path
):
    """A refresh_token_file of binary bytes, or larger than any refresh token: the refresh
    fails (503 naming the file and why, never its content), Azure AD is not asked, and the
    file is left as it was."""
    app = sandbox.state.register(TENANT, "22222222-0000-4000-8000-000000000002")
    cases = {
        "binary": (b"\xff\xfeRT-SECRET-PART\n", "utf-8"),
        "huge": (b"R" * (1 << 20), "larger"),
    }
    profiles = ""
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
        profiles += (
            f'[profiles.{name}]\nwarm = false\ncredential = "refresh_token"\n'
            f'client_id = "{app.client_id}"\nrefresh_token_file = "{tmp_path / name}"\n'
        )
    b = await start_broker(settings_for(sandbox, profiles))
    calls = sandbox.state.counts["aad"]
    for name, (content, words) in cases.items():
        r = await b.get(f"/v1/token/{name}")
        body = await r.text()
        assert r.status == 503, body
        assert str(tmp_path / name) in body and words in body, body
        assert "RT-SECRET" not in body and "RRRRRRRR" not in body
        assert (tmp_path / name).read_bytes() == content
    assert sandbox.state.counts["aad"] == calls
    logs = b.logs.getvalue()
    assert "RT-SECRET" not in logs and "RRRRRRRR" not in logs
