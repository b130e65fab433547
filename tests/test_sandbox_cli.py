"""`pc-token-broker sandbox` from the command line: the config it prints is complete (the
mirror's upstream, [msi], a customer-tenant profile per --customer-tenant) and valid as
printed; --detach returns once it listens; it removes its files when it stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "pc-token-broker"
GUID = "0f6c0000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--customer-tenant", "x=not-a-guid"], "--customer-tenant"),
        (["--customer-tenant", 'x"]\n[server]'], "--customer-tenant"),
        (["--customer-tenant", "fabrikam-\u00e9"], "--customer-tenant"),  # non-ASCII: into TOML
        (["--customer-tenant", "\uff46\uff41\uff42.example"], "--customer-tenant"),  # fullwidth
        (["--customer-tenant", "x\u200b.example"], "--customer-tenant"),  # zero-width space
        (["--refused-consent", "fabrikam\u0131"], "--refused-consent"),  # dotless i
        (["--broker-port", "0"], "--broker-port"),
        (["--broker-port", "65536"], "--broker-port"),
    ],
)
def test_a_bad_sandbox_option_is_a_usage_error(args, named) -> None:
    proc = subprocess.run(
        [str(BIN), "sandbox", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and named in proc.stderr and proc.stdout == ""


def test_the_printed_config_is_complete_and_valid_as_printed(tmp_path: Path) -> None:
    out = tmp_path / "sandbox.toml"
    with out.open("w") as f:
        proc = subprocess.run(
            [
                *(str(BIN), "sandbox", "--port", "0", "--broker-port", "18721", "--detach"),
                *("--customer-tenant", "fabrikam", "--customer-tenant", f"contoso.example={GUID}"),
            ],
            stdout=f,
            timeout=30,
        )
    assert proc.returncode == 0  # --detach: back once the config is out
    text = out.read_text()
    pid = int(re.search(r"stop it: kill (\d+)", text).group(1))
    try:
        config = tomllib.loads(text)  # valid TOML as printed
        url = config["defaults"]["authority"]
        assert config["mirror"]["upstream_base"] == url
        assert config["defaults"]["generatetoken_url"] == f"{url}/v3/generatetoken"
        assert config["server"]["listen"] == ["127.0.0.1:18721"]
        assert "generated_header_file" in config["msi"]
        customers = config["profiles"]["customers"]
        assert customers["credential"] == "refresh_token"
        assert {"fabrikam.onmicrosoft.com", "contoso.example", GUID} <= set(
            customers["customer_tenants"]
        )
        folder = Path(customers["refresh_token_file"]).parent
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert oct(Path(customers["refresh_token_file"]).stat().st_mode & 0o777) == "0o600"
        check = subprocess.run(
            [str(BIN), "check-config", "--config", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "warning" not in check.stdout, check.stdout
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):  # the detached sandbox stops and removes its folder (10 s at most)
        if not folder.exists():
            break
        subprocess.run(["sleep", "0.05"])
    assert not folder.exists()
