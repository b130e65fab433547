"""`pc-token-broker sandbox --user mfa|no-mfa --refused-consent NAME[=GUID]`: the roles a
customer-tenant operator rehearses with, from the command line: the printed profile works as
printed with `consent`, and a refused consent is refused with AADSTS65001."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from broker.cli.main import main
from broker.sandbox.roles import Roles, apply, tenant_arg
from tests.conftest import CLIENT_ID, TENANT
from tests.test_tenants import gdap, token  # noqa: F401 - gdap is a fixture


async def test_the_sandbox_command_plays_a_user_without_mfa(tmp_path, monkeypatch, capsys):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "sandbox", "--port", "0", "--user", "no-mfa",
        "--refused-consent", "refused.example",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        text = ""
        while "names the fix" not in text:  # the last line of the roles
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"the sandbox ended early: {text}"
            text += line.decode()
        url = re.search(r"sandbox listening on (http://\S+)", text).group(1)  # type: ignore[union-attr]
        secret = re.search(r"export SANDBOX_SECRET=(\S+)", text).group(1)  # type: ignore[union-attr]
        assert "WITHOUT MFA" in text and "customer tenant refused.example (" in text
        lines = [
            line.lstrip("# ").strip() for line in text.split("[profiles.user]")[1].splitlines()
        ]
        block = "\n".join(line for line in lines if "=" in line and not line.startswith("its "))
        config = tmp_path / "config.toml"
        config.write_text(
            f'[defaults]\nauthority = "{url}"\ngeneratetoken_url = "{url}/v3/generatetoken"\n'
            f"[profiles.user]\n{block}\n"
        )
        config.chmod(0o600)
        monkeypatch.setenv("SANDBOX_SECRET", secret)
        loop = asyncio.get_running_loop()
        argv = ["consent", "user", "--config", str(config)]
        assert await loop.run_in_executor(None, main, argv) == 1  # no MFA: nothing written
        assert "no MFA" in capsys.readouterr().err
        assert await loop.run_in_executor(None, main, [*argv, "--allow-no-mfa"]) == 0
        written = (tmp_path / "sandbox-user.refresh-token").read_text().strip()
        assert written and written not in capsys.readouterr().out
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_refused_consent_is_65001_and_the_user_role_sets_mfa(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
):
    name, guid = tenant_arg("refused.example")
    apply(Roles("no-mfa", ((name, guid),)), sandbox.state, sandbox.url, TENANT, CLIENT_ID)
    assert sandbox.state.apps[CLIENT_ID].mfa is False
    b = await start_broker(gdap())
    for asked in (name, guid):
        r = await token(b, asked)
        assert r.status == 502
        assert (await r.json())["error"]["aadsts"] == 65001


def test_tenant_arg_takes_a_name_and_an_optional_guid():
    name, guid = tenant_arg("Fabrikam.example=0F6C3A1E-0000-4000-8000-000000000001")
    assert (name, guid) == ("fabrikam.example", "0f6c3a1e-0000-4000-8000-000000000001")
    assert tenant_arg("fabrikam.example") == tenant_arg("FABRIKAM.example")  # a stable id
    for bad in ("", "x=not-a-guid", "a/b"):
        with pytest.raises(ValueError):
            tenant_arg(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["sandbox", "--refused-consent", "x=not-a-guid"])
    assert exit_.value.code == 2
