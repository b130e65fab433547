"""The READMEs' shell blocks, run as written.

Every ```sh block of README.md and systemd/README.md is either marked `<!-- doc-test: NAME -->`
(run here, in order, by `test_readme_blocks_run_as_written`) or preceded by a paragraph that
says "Not run by the tests:" and why. The substitutions the run makes are listed in the README
("How the tests run these blocks"); everything else runs exactly as printed, with bash and curl,
against a real daemon started by the README's own `serve` block, the sandbox as its upstream.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, free_port

DOCS = ("README.md", "systemd/README.md")
RUN_ORDER = ("install", "serve", "tokens", "mirror", "msi")  # the marked blocks, in run order
README_TENANT = "contoso.onmicrosoft.com"
README_CLIENT = "00000000-0000-0000-0000-000000000000"
_FENCE = re.compile(r"^```(sh|bash|shell)\n(.*?)^```", re.M | re.S)
_MARK = re.compile(r"<!-- doc-test: ([a-z-]+) -->")


@dataclass
class Block:
    doc: str
    line: int
    text: str
    name: str | None  # run by the tests under this name
    says_why: bool  # a "Not run by the tests:" paragraph precedes it


def shell_blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    found = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").split("\n\n")[-1]  # the paragraph before it
        mark = _MARK.search(before)
        found.append(
            Block(
                doc,
                text.count("\n", 0, m.start()) + 1,
                m.group(2),
                mark.group(1) if mark else None,
                "Not run by the tests:" in before,
            )
        )
    return found


def test_every_shell_block_is_run_or_says_why() -> None:
    blocks = [b for doc in DOCS for b in shell_blocks(doc)]
    assert len(blocks) >= 7
    for b in blocks:
        assert (b.name is None) != (not b.says_why), (
            f"{b.doc}:{b.line}: mark the block <!-- doc-test: NAME --> (and run it in "
            "tests/test_readme.py) or say in the paragraph before it 'Not run by the tests:' "
            "and why"
        )
    names = [b.name for b in blocks if b.name]
    assert names == list(RUN_ORDER), names


def test_config_example_passes_its_own_validation_command(capsys, monkeypatch) -> None:
    """config.example.toml names the command that validates it; that command passes."""
    from broker.cli.main import main

    text = (ROOT / "config.example.toml").read_text()
    command = re.search(r"^# Validate with:\s+pc-token-broker (.+)$", text, re.M)
    assert command, "config.example.toml says how to validate it"
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert main(command.group(1).split()) == 0
    assert "config.example.toml: OK" in capsys.readouterr().out


# What the run changes, and why (the README lists the same): paths under a temporary root, a
# free port, the test environment's packages instead of a download, the sandbox as upstream.
_PRELUDE = """\
set -euo pipefail
link_test_environment() {  # stands for `$VENV/bin/pip install .`: no download, same code
    local site
    site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\\n' "$TEST_SITE_PACKAGES" "$TEST_REPO" > "$site/_pc_token_broker_tests.pth"
    printf '#!%s\\nimport sys\\nfrom broker.cli.main import main\\nsys.exit(main())\\n' \\
        "$1/bin/python" > "$1/bin/pc-token-broker"
    chmod 0755 "$1/bin/pc-token-broker"
}
"""


def substituted(block: Block, root: Path, port: int, sandbox_url: str) -> str:
    text = block.text.replace(
        "/opt/pc-token-broker/bin/pip install .", "link_test_environment /opt/pc-token-broker"
    )
    text = text.replace("python3 -m venv", f"{sys.executable} -m venv --without-pip")
    upstream = (
        f'[defaults]\nauthority = "{sandbox_url}"\n'
        f'generatetoken_url = "{sandbox_url}/v3/generatetoken"\n'
        f'[mirror]\nupstream_base = "{sandbox_url}"\n'
    )
    text = text.replace("config.toml <<'EOF'\n", f"config.toml <<'EOF'\n{upstream}")
    for path in ("/opt/", "/etc/pc-token-broker", "/run/pc-token-broker", "/usr/local/bin"):
        text = text.replace(path, f"{root}{path}")
    return text.replace("8721", str(port))


async def _bash(script: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_readme_blocks_run_as_written(sandbox, secret, tmp_path: Path) -> None:
    import sysconfig

    blocks = {b.name: b for b in shell_blocks("README.md") if b.name}
    sandbox.state.register(README_TENANT, README_CLIENT, client_secret=secret)
    root, port = tmp_path / "root", free_port()
    (root / "usr/local/bin").mkdir(parents=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PC_TOKEN_BROKER_", "PC_ACCESS_TOKEN", "CREDENTIALS_DIRECTORY"))
        and k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")
    }
    env.update(
        PATH=f"{root}/usr/local/bin:{Path(sys.executable).parent}:/usr/bin:/bin",
        CLIENT_SECRET=secret,
        TEST_SITE_PACKAGES=sysconfig.get_paths()["purelib"],
        TEST_REPO=str(ROOT),
        NO_PROXY="127.0.0.1,localhost",
        PC_TOKEN_BROKER_CONFIG=f"{root}/etc/pc-token-broker/config.toml",  # the default path
    )

    def script(name: str) -> str:
        return _PRELUDE + substituted(blocks[name], root, port, sandbox.url)

    # 1. install: software, secret, config, check-config.
    code, out, err = await _bash(script("install"), env)
    assert code == 0, out + err
    assert "config.toml: OK" in out and "msi:             on" in out
    secret_file = root / "etc/pc-token-broker/credentials/client-secret"
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert secret not in out + err

    # 2. serve, in the background: bash runs the one command in its own place (exec).
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    serve_line = substituted(blocks["serve"], root, port, sandbox.url).strip()
    assert "\n" not in serve_line
    daemon = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        serve_line,
        cwd=ROOT,
        env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        while b"READY=1" not in await asyncio.wait_for(loop.sock_recv(notify, 4096), 30):
            pass
        assert b"serve" in Path(f"/proc/{daemon.pid}/cmdline").read_bytes()  # bash exec'd it
        await sandbox.state.wait_calls("partner", 1)

        # 3. getting a token: curl and the CLI, which finds the daemon through the config.
        code, out, err = await _bash(script("tokens"), env)
        assert code == 0, out + err
        assert out.count('"access_token"') >= 3 and "the token is in the environment" in out
        assert "default  partner  fresh" in out and err == ""

        # 4. the mirror, with an Azure AD token the broker hands out.
        from broker.cli.client import Target, request

        status, aad = request(
            Target(f"http://127.0.0.1:{port}"), "GET", "/v1/token?kind=aad", accept="text/plain"
        )
        assert status == 200
        code, out, err = await _bash(script("mirror"), {**env, "AAD_TOKEN": aad.decode()})
        assert code == 0 and '"access_token"' in out, out + err

        # 5. the Azure SDK through the managed-identity endpoint.
        code, out, err = await _bash(script("msi"), env)
        assert code == 0, out + err
        assert int(out.strip()) > 1.7e9  # the token's expires_on
    finally:
        notify.close()
        if daemon.returncode is None:
            daemon.send_signal(15)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    assert daemon.stderr is not None
    logs = (await daemon.stderr.read()).decode()
    assert '"listening"' in logs and secret not in logs
    assert not (root / "run/pc-token-broker/broker.sock").exists()  # removed at clean stop


def test_readme_substitutions_are_the_documented_ones() -> None:
    """A change to the run's substitutions must change the README's list of them."""
    readme = (ROOT / "README.md").read_text()
    for phrase in (
        "`/opt`, `/etc/pc-token-broker`, `/run/pc-token-broker`",
        "`$PC_TOKEN_BROKER_CONFIG` names the config there",
        "port 8721 is a free port",
        "`pip install .`",
        "`--without-pip`",
        "`[defaults]` and `[mirror]` tables in front",
        "`$CLIENT_SECRET`",
        "`$AAD_TOKEN`",
    ):
        assert phrase in " ".join(readme.split()), phrase


@pytest.fixture(autouse=True)
def _bash_is_there() -> None:
    assert subprocess.run(["bash", "--version"], capture_output=True).returncode == 0
