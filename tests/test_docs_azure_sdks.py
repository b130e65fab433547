"""docs/use/azure-sdks.md's shell blocks marked `<!-- doc-test: NAME -->`, run as written with
bash against a real daemon (port 8721 replaced by a free port, the config named by
$PC_TOKEN_BROKER_CONFIG, the test environment's python with azure-identity first on PATH)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from broker.config.load import parse_settings
from tests.conftest import config_text
from tests.support import AZURE_ENV, ROOT, free_port

PAGE = ROOT / "docs/use/azure-sdks.md"
_BLOCK = re.compile(r"<!-- doc-test: ([a-z-]+) -->\n```sh\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    return dict(_BLOCK.findall(PAGE.read_text()))


async def test_the_pages_blocks_run_as_written(sandbox, secret, tmp_path: Path, run_server):
    port = free_port()
    (tmp_path / "header").write_text("doc-test-identity-header\n")
    text = config_text(sandbox).replace(
        'listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]'
    )
    text += f'\n[msi]\nidentity_header_file = "{tmp_path}/header"\nimds = true\n'
    config = tmp_path / "config.toml"
    config.write_text(text)
    await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    found = blocks()
    assert set(found) == {"msi", "imds"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in AZURE_ENV and not k.startswith(("IDENTITY_", "AZURE_POD"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PC_TOKEN_BROKER_CONFIG"] = str(config)
    env["TEST_CLIENT_SECRET"] = secret
    for name, script in found.items():
        proc = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script.replace("8721", str(port)),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (name, err.decode()[-2000:])
        last = out.decode().strip().splitlines()[-1]
        assert last.isdigit(), (name, last)  # the SDK's expires_on
        if name == "imds":
            assert '"access_token"' in out.decode() and '"ext_expires_in"' in out.decode()
