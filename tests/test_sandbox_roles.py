"""`pc-token-broker sandbox --user mfa|no-mfa --refused-consent NAME[=GUID]`: the roles a
customer-tenant operator rehearses with, from the command line: the printed profile works as
printed with `consent`, and a refused consent is refused with AADSTS65001."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker.cli.main import main
from broker.sandbox.roles import USER_CLIENT_ID, Roles, apply, tenant_arg
from tests.conftest import CLIENT_ID, TENANT
from tests.support import free_port, serve_process, until
from tests.test_tenants import gdap, token  # noqa: F401 - gdap is a fixture

BIN = Path(sys.executable).parent / "pc-token-broker"
GUID = "0f6c0000-0000-4000-8000-000000000002"


def _sandbox(tmp_path, *args: str) -> tuple[Path, str, int]:
    """`sandbox --detach ARGS > sandbox.toml`, as the newcomer runs it: the file, its text,
    the sandbox's pid."""
    out = tmp_path / "sandbox.toml"
    with out.open("w") as f:
        proc = subprocess.run([str(BIN), "sandbox", "--port", "0", "--detach", *args], stdout=f,
                              timeout=30)  # fmt: skip
    assert proc.returncode == 0
    text = out.read_text()
    return out, text, int(re.search(r"stop it: kill (\d+)", text).group(1))  # type: ignore[union-attr]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=60)


async def test_the_newcomers_path_sandbox_consent_serve_token(tmp_path):
    """sandbox --user mfa --detach > sandbox.toml; consent user; serve; token user --tenant:
    each as printed, the user profile its own app; before consent, the others serve."""
    port = free_port()
    out, text, pid = _sandbox(
        tmp_path, "--user", "mfa", "--customer-tenant", "fabrikam", "--broker-port", str(port),
        "--refused-consent", "contoso",
    )  # fmt: skip
    serve = None
    try:
        config = tomllib.loads(text)  # valid TOML as printed, the user a real table
        user = config["profiles"]["user"]
        assert user["client_id"] not in {p["client_id"] for n, p in config["profiles"].items()
                                         if n != "user"}  # fmt: skip
        refresh_file = Path(user["refresh_token_file"])
        assert refresh_file.parent == Path(config["msi"]["generated_header_file"]).parent
        assert not refresh_file.exists()
        assert "consent user --config" in text and "contoso.onmicrosoft.com (" in text
        assert "contoso.onmicrosoft.com" in config["profiles"]["customers"]["customer_tenants"]
        check = _run("check-config", "--config", str(out))  # set up before consent: ready
        assert check.returncode == 0, check.stdout + check.stderr
        assert "pc-token-broker consent user" in check.stdout + check.stderr
        assert "share client_id" not in check.stdout + check.stderr  # the user: its own app
        serve = await serve_process(out, stderr=subprocess.DEVNULL)
        # the default profile serves meanwhile
        await until(lambda: _run("token", "--config", str(out)).returncode == 0, "serving", 30)
        early = _run("token", "user", "--tenant", "fabrikam.onmicrosoft.com", "--config", str(out))
        assert early.returncode != 0 and "pc-token-broker consent user" in early.stderr
        consent = _run("consent", "user", "--config", str(out))
        assert consent.returncode == 0, consent.stdout + consent.stderr
        assert "/_sandbox/devicelogin" in consent.stdout  # not the real site
        assert "microsoft.com/devicelogin" not in consent.stdout
        written = refresh_file.read_text().strip()
        assert written and written not in consent.stdout + consent.stderr
        got = _run("token", "user", "--tenant", "fabrikam.onmicrosoft.com", "--config", str(out))
        assert got.returncode == 0 and got.stdout.strip(), got.stderr
        refused = _run("token", "user", "--tenant", "contoso.onmicrosoft.com", "--config", str(out))
        assert refused.returncode != 0 and "65001" in refused.stderr
    finally:
        if serve is not None:
            serve.terminate()
            await serve.wait()
        os.kill(pid, signal.SIGTERM)


async def test_a_refused_consent_is_65001_and_the_user_role_sets_mfa(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
):
    name, guid = tenant_arg("refused.example")
    text = apply(
        Roles("no-mfa", ((name, guid),)), sandbox.state, TENANT, "sandbox-secret-x1", "/f", "/d"
    )
    assert sandbox.state.apps[USER_CLIENT_ID].mfa is False  # the user's own app
    assert "--allow-no-mfa" in text and tomllib.loads(text)["profiles"]["user"]["client_id"] == (
        USER_CLIENT_ID
    )
    b = await start_broker(gdap())
    for asked in (name, guid):
        r = await token(b, asked)
        assert r.status == 502
        assert (await r.json())["error"]["aadsts"] == 65001


def test_tenant_arg_takes_a_name_and_an_optional_guid():
    """One parser for --customer-tenant and --refused-consent: a bare NAME is
    NAME.onmicrosoft.com, either way."""
    name, guid = tenant_arg("Fabrikam.example=0F6C3A1E-0000-4000-8000-000000000001")
    assert (name, guid) == ("fabrikam.example", "0f6c3a1e-0000-4000-8000-000000000001")
    assert tenant_arg("fabrikam.example") == tenant_arg("FABRIKAM.example")  # a stable id
    assert tenant_arg("contoso") == tenant_arg("contoso.onmicrosoft.com")
    assert tenant_arg("contoso")[0] == "contoso.onmicrosoft.com"
    for bad in (
        "",
        "x=not-a-guid",
        "a/b",
        "=x",
        'a"b',
        "a b",
        "a\n[evil]",
        "-a",
        "a..b",
        "a" * 201,
    ):
        with pytest.raises(ValueError):
            tenant_arg(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["sandbox", "--refused-consent", "x=not-a-guid"])
    assert exit_.value.code == 2


async def test_codes_the_sandbox_approves_itself_point_to_its_own_page(sandbox):
    """--user: the device-code answer's page and message are the sandbox's, never the real
    microsoft.com/devicelogin a newcomer would go to; without it, Azure AD's own."""
    import aiohttp

    form = {"client_id": CLIENT_ID, "scope": "openid offline_access"}
    url = f"{sandbox.url}/{TENANT}/oauth2/v2.0/devicecode"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=form) as r:
            assert (await r.json())["verification_uri"] == "https://microsoft.com/devicelogin"
        sandbox.state.device.auto = "approved"
        async with s.post(url, data=form) as r:
            answer = await r.json()
        assert answer["verification_uri"] == f"{sandbox.url}/_sandbox/devicelogin"
        assert "microsoft.com/devicelogin" not in answer["verification_uri"] + answer["message"]
        assert "approves" in answer["message"]
        async with s.get(answer["verification_uri"]) as page:
            assert page.status == 200 and "nothing to do" in await page.text()


async def test_a_profile_set_up_before_consent_serves_once_the_file_is_written(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
):
    """A refresh-token profile whose file does not exist yet (consent not run): its tokens
    fail with "run pc-token-broker consent PROFILE" (503, remembered for the backoff), the
    other profiles serve, and the first caller after the file is written gets a token, the
    backoff not waited out."""
    sandbox.state.register_customer(GUID, ("fabrikam.example",))
    settings = gdap()
    text = gdap.rt_file.read_text()
    gdap.rt_file.unlink()
    b = await start_broker(settings)
    for _ in range(2):  # the second from memory
        for r in (await token(b, "fabrikam.example"), await b.get("/v1/token/gdap?kind=aad")):
            assert r.status == 503
            assert "run `pc-token-broker consent gdap`" in (await r.json())["error"]["message"]
    assert (await b.get("/v1/token/default")).status == 200
    gdap.rt_file.write_text(text)  # what consent does
    assert (await token(b, "fabrikam.example")).status == 200
    assert (await b.get("/v1/token/gdap?kind=aad")).status == 200
