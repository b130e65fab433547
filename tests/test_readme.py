"""The shell blocks of the README and the documentation pages, run as written.

Every ```sh block of README.md, systemd/README.md and docs/**/*.md is either marked
`<!-- doc-test: NAME -->` (run here) or says next to it why it is not run: a paragraph before it
saying "Not run by the tests:", or a `<!-- not run: why -->` comment. The README's try-out runs
as written against the sandbox (`test_readme_tryout_runs_as_written`); the install, serve, token,
mirror and Azure SDK blocks run in order against a real daemon started by the docs' own `serve`
block (`test_doc_blocks_run_as_written`). The substitutions each run makes are listed in
docs/design/testing.md; everything else runs exactly as printed, with bash and curl.
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

DOCS = (
    "README.md",
    "systemd/README.md",
    *sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if "_raw" not in p.parts
    ),
)
# The marked blocks: the try-out, then the install's, in run order. A name may mark several
# blocks (the try-out is in the README and in docs/try/index.md, word for word).
RUN_ORDER = ("tryout", "install", "serve", "tokens", "mirror", "msi")
# Blocks another module runs, with the config they need: the IMDS page (test_docs_azure_sdks.py)
RUN_ELSEWHERE = frozenset({"imds", "customers", "doctor"})  # test_docs_sandbox_blocks.py
README_TENANT = "contoso.onmicrosoft.com"
README_CLIENT = "00000000-0000-0000-0000-000000000000"
_FENCE = re.compile(r"^```(sh|bash|shell)\n(.*?)^```", re.M | re.S)
_MARK = re.compile(r"<!-- doc-test: ([a-z-]+) -->")
_NOT_RUN = re.compile(r"<!-- not run: \S[^>]*-->")


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
                "Not run by the tests:" in before or bool(_NOT_RUN.search(before)),
            )
        )
    return found


def test_every_shell_block_is_run_or_says_why() -> None:
    blocks = [b for doc in DOCS for b in shell_blocks(doc)]
    assert len(blocks) >= 7
    for b in blocks:
        assert (b.name is None) != (not b.says_why), (
            f"{b.doc}:{b.line}: mark the block <!-- doc-test: NAME --> (and run it in "
            "tests/test_readme.py) or say before it why not ('Not run by the tests:' in the "
            "paragraph before it, or <!-- not run: why -->)"
        )
    names = {b.name for b in blocks if b.name}
    assert names == set(RUN_ORDER) | RUN_ELSEWHERE, names


def marked(name: str) -> list[Block]:
    return [b for doc in DOCS for b in shell_blocks(doc) if b.name == name]


def test_the_readme_tryout_is_the_docs_tryout() -> None:
    """The try-out is printed twice (the README, Try it): the one the test runs is both."""
    texts = {(b.doc, b.text) for b in marked("tryout")}
    assert {doc for doc, _ in texts} == {"README.md", "docs/try/index.md"}
    assert len({text for _, text in texts}) == 1
    lines = [line for line in marked("tryout")[0].text.splitlines() if line.strip()]
    assert len(lines) <= 6  # the README's promise: at most six commands


def test_the_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "Not run by the tests" not in readme  # nothing about how the tests run


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


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PC_TOKEN_BROKER_", "PC_ACCESS_TOKEN", "CREDENTIALS_DIRECTORY"))
        and k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "IDENTITY_ENDPOINT")
        and k not in ("IDENTITY_HEADER", "AZURE_CLIENT_ID", "MSI_ENDPOINT", "MSI_SECRET")
    }


# The try-out's run: the README's block between a trap that stops what it started (the broker,
# job %1, and the detached sandbox, whose PID its config names) and a check that both stopped.
_TRYOUT_PRELUDE = """\
set -euo pipefail
stop_all() {
    kill %1 2>/dev/null && { wait %1; echo "broker exited $?"; }
    local pid
    pid=$(sed -n 's/.*stop it: kill \\([0-9]*\\)).*/\\1/p' sandbox.toml)
    if [ -n "$pid" ]; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && echo "sandbox still running" || echo "sandbox stopped"
    fi
}
trap stop_all EXIT
"""


async def test_readme_tryout_runs_as_written(tmp_path: Path) -> None:
    """The README's six commands, in an empty directory, against `pc-token-broker sandbox`: the
    sandbox on a free port and the broker on another (`--port 0 --broker-port N` added, 8721
    replaced); `python` and `pc-token-broker` are the test environment's."""
    (block,) = [b for b in marked("tryout") if b.doc == "README.md"]
    port = free_port()
    text = block.text.replace(
        "pc-token-broker sandbox ", f"pc-token-broker sandbox --port 0 --broker-port {port} "
    ).replace("8721", str(port))
    env = {**_clean_env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    work = tmp_path / "tryout"
    work.mkdir()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        _TRYOUT_PRELUDE + text,
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 90)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    assert '"access_token"' in lines[0] and '"profile": "default"' in lines[0], out  # curl
    assert lines[1].count(".") == 2 and lines[1].startswith("eyJ"), out  # the tenant's JWT
    assert 1.7e9 < int(lines[2]) < 2.2e9, out  # the Azure SDK's expires_on
    assert lines[3:] == ["broker exited 0", "sandbox stopped"], out
    config = (work / "sandbox.toml").read_text()
    folder = re.search(r'client_secret_file = "(.+)/client-secret"', config)
    assert folder and not Path(folder.group(1)).exists()  # the sandbox removed its files
    secret = re.search(r"SANDBOX_SECRET=(\S+)", config)
    assert secret and secret.group(1) not in out + err + (work / "broker.log").read_text()
    assert '"listening"' in (work / "broker.log").read_text()


async def test_doc_blocks_run_as_written(sandbox, secret, tmp_path: Path) -> None:
    import sysconfig

    blocks = {name: marked(name) for name in RUN_ORDER}
    sandbox.state.register(README_TENANT, README_CLIENT, client_secret=secret)
    root, port = tmp_path / "root", free_port()
    (root / "usr/local/bin").mkdir(parents=True)
    env = _clean_env()
    env.update(
        PATH=f"{root}/usr/local/bin:{Path(sys.executable).parent}:/usr/bin:/bin",
        CLIENT_SECRET=secret,
        TEST_SITE_PACKAGES=sysconfig.get_paths()["purelib"],
        TEST_REPO=str(ROOT),
        NO_PROXY="127.0.0.1,localhost",
        PC_TOKEN_BROKER_CONFIG=f"{root}/etc/pc-token-broker/config.toml",  # the default path
    )

    def script(name: str) -> str:
        return _PRELUDE + "\n".join(substituted(b, root, port, sandbox.url) for b in blocks[name])

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
    (serve,) = blocks["serve"]
    serve_line = substituted(serve, root, port, sandbox.url).strip()
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
        assert all(int(line) > 1.7e9 for line in out.split()), out  # each expires_on
    finally:
        notify.close()
        if daemon.returncode is None:
            daemon.send_signal(15)
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    assert daemon.stderr is not None
    logs = (await daemon.stderr.read()).decode()
    assert '"listening"' in logs and secret not in logs
    assert not (root / "run/pc-token-broker/broker.sock").exists()  # removed at clean stop


def test_doc_substitutions_are_the_documented_ones() -> None:
    """A change to the runs' substitutions must change the docs' list of them."""
    readme = (ROOT / "docs/design/testing.md").read_text()
    for phrase in (
        "`/opt`, `/etc/pc-token-broker`, `/run/pc-token-broker`",
        "`$PC_TOKEN_BROKER_CONFIG` names the config there",
        "port 8721 is a free port",
        "`pip install .`",
        "`--without-pip`",
        "`[defaults]` and `[mirror]` tables in front",
        "`$CLIENT_SECRET`",
        "`$AAD_TOKEN`",
        "`--port 0`",
        "`--broker-port`",
    ):
        assert phrase in " ".join(readme.split()), phrase


@pytest.fixture(autouse=True)
def _bash_is_there() -> None:
    assert subprocess.run(["bash", "--version"], capture_output=True).returncode == 0
