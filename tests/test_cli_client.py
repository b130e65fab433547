"""The client commands' smaller promises, as the docs state them: the 30 s answer timeout is
settable (--timeout, $PC_TOKEN_BROKER_TIMEOUT) and a bad value is a usage error; completion
offers the running daemon's profile names (bash, fish); the help and the docs agree on the
config file's permissions."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import time
from pathlib import Path

import pytest

from broker.cli.completion import script as completion_script
from broker.cli.main import main
from broker.cli.parser import parser
from tests.conftest import make_settings
from tests.support import ROOT

BIN = Path(sys.executable).parent


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_answer_timeout_is_settable(silent_port, how, monkeypatch, capsys) -> None:
    argv = ["token", "--url", f"127.0.0.1:{silent_port}"]
    if how == "option":
        argv += ["--timeout", "0.3"]
    else:
        monkeypatch.setenv("PC_TOKEN_BROKER_TIMEOUT", "0.3")
    started = time.monotonic()
    assert main(argv) == 3
    assert time.monotonic() - started < 5  # not the default 30 s
    err = capsys.readouterr().err
    assert "timed out" in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "NaN", "inf", "1e309", "3601", "soon", ""])
def test_a_bad_timeout_is_a_usage_error(value, monkeypatch, capsys) -> None:
    monkeypatch.delenv("PC_TOKEN_BROKER_TIMEOUT", raising=False)
    assert main(["status", "--url", "127.0.0.1:9", "--timeout", value]) == 2
    assert "--timeout" in capsys.readouterr().err
    monkeypatch.setenv("PC_TOKEN_BROKER_TIMEOUT", value or "x")
    assert main(["status", "--url", "127.0.0.1:9"]) == 2
    assert "$PC_TOKEN_BROKER_TIMEOUT" in capsys.readouterr().err


@pytest.fixture
def drip_port():
    """A TCP port whose listener answers every connection slowly: headers at once, then a
    byte of a 100 KB body every 0.1 s (each read well within any per-read timeout)."""
    import threading

    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                conn.sendall(b"Content-Length: 100000\r\n\r\n")
                while not stop.wait(0.1):
                    conn.sendall(b" ")
            except OSError:
                pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.settimeout(0.2)

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        yield s.getsockname()[1]
        stop.set()


def test_a_dripping_answer_ends_at_the_timeout_not_per_read(drip_port, monkeypatch, capsys):
    """--timeout bounds the whole answer (completion's Tab relies on `--timeout 1`, a probe on
    healthcheck's 5 s), not each read: a listener dripping a byte every 0.1 s is given up on."""
    monkeypatch.delenv("PC_TOKEN_BROKER_TIMEOUT", raising=False)
    for argv in (["status", "--json"], ["token"], ["healthcheck"]):
        started = time.monotonic()
        code = main([*argv, "--url", f"127.0.0.1:{drip_port}", "--timeout", "1"])
        assert code == 3, argv  # as a silent listener: the daemon is not answering
        assert time.monotonic() - started < 4, argv
        err = capsys.readouterr().err
        assert "timed out" in err and err.count("\n") == 1, err


async def _complete(shell_program: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *shell_program, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_completion_offers_the_daemons_profile_names(
    sandbox, secret, start_broker, tmp_path: Path
) -> None:
    settings = make_settings(
        sandbox, secret, profiles="[profiles.default]\n[profiles.billing]\nwarm = false\n"
    )
    b = await start_broker(settings)
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "PC_TOKEN_BROKER_URL": b.client.base,
        "PC_TOKEN_BROKER_CONFIG": str(tmp_path / "none.toml"),
        "HOME": str(tmp_path),
    }
    (tmp_path / "none.toml").write_text("")
    script = tmp_path / "c.bash"
    script.write_text(completion_script(parser(), "bash"))
    program = (
        f"source {script}; COMP_WORDS=(pc-token-broker token ''); COMP_CWORD=2; "
        '_pc_token_broker; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    words = (await _complete(["bash", "-c", program], env)).split()
    assert {"default", "billing", "--kind", "--timeout"} <= set(words)
    program = program.replace("token ''", "token 'bi'")
    assert (await _complete(["bash", "-c", program], env)).split() == ["billing"]
    # No daemon: no names, no error, no wait beyond the one-second timeout.
    env["PC_TOKEN_BROKER_URL"] = "127.0.0.1:9"
    program = program.replace("token 'bi'", "status ''")
    assert "billing" not in await _complete(["bash", "-c", program], env)


async def test_completion_runs_nothing_a_hostile_listener_names(tmp_path: Path) -> None:
    """Something else answering on the daemon's address cannot make a Tab run a command:
    only names a config allows (letters, digits, '_', '.', '-') are offered."""
    from aiohttp import web

    async def status(_request: web.Request) -> web.Response:
        profiles = {"$(touch pwned)": {}, "`touch pwned`": {}, "ok-name": {}, "a b": {}}
        return web.json_response({"profiles": {k: {"partner": v} for k, v in profiles.items()}})

    app = web.Application()
    app.router.add_get("/v1/profiles", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        script = tmp_path / "c.bash"
        script.write_text(completion_script(parser(), "bash"))
        env = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "PC_TOKEN_BROKER_URL": f"127.0.0.1:{port}",
            "PC_TOKEN_BROKER_CONFIG": str(tmp_path / "none.toml"),
        }
        (tmp_path / "none.toml").write_text("")
        program = (
            f"cd {tmp_path}; source {script}; COMP_WORDS=(pc-token-broker token ''); "
            'COMP_CWORD=2; _pc_token_broker; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        words = (await _complete(["bash", "-c", program], env)).split()
    finally:
        await runner.cleanup()
    assert "ok-name" in words
    assert not (tmp_path / "pwned").exists()
    assert not any("touch" in w or w in ("a", "b") for w in words), words


def test_fish_completion_covers_every_command_and_option(capsys) -> None:
    from broker.cli.parser import commands

    assert main(["completion", "fish"]) == 0
    fish = capsys.readouterr().out
    lines = [line for line in fish.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "function __pc_token_broker_profiles" and lines[2] == "end"
    assert all(line.startswith("complete -c pc-token-broker ") for line in lines[3:])
    for name, sub in commands().items():
        assert f"-n __fish_use_subcommand -a {name} -d " in fish, name
        for option in re.findall(r"(--[a-z-]+)", sub.format_usage()):
            assert f"'__fish_seen_subcommand_from {name}' " in fish
            assert re.search(rf"__fish_seen_subcommand_from {name}' .*-l {option[2:]}\b", fish), (
                name,
                option,
            )
    assert "-l kind -xa 'partner aad'" in fish
    assert "-a '(__pc_token_broker_profiles)'" in fish


def test_help_and_docs_agree_on_the_config_files_permissions(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    manual = " ".join(capsys.readouterr().out.split())
    install = (ROOT / "docs/run/install.md").read_text()
    assert "chmod 0644 /etc/pc-token-broker/config.toml" in install  # the config: no secret
    assert "holds no secret is 0644" in manual
    assert "0600 config" not in manual  # what the help used to say
    cli = " ".join((ROOT / "docs/use/cli.md").read_text().split())
    assert "`--timeout SECONDS` or `$PC_TOKEN_BROKER_TIMEOUT`" in cli and "30 seconds" in cli
    assert "PC_TOKEN_BROKER_TIMEOUT" in manual
