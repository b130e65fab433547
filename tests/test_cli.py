"""The command line against a running daemon: token, status, healthcheck, serve and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from broker.cli.main import main
from broker.config.load import parse_settings
from broker.daemon.server import serve
from tests.conftest import config_text


@pytest.fixture
async def running(sandbox, secret, tmp_path: Path):
    """A daemon (server.serve, in this loop) on a unix socket in tmp_path."""
    sock = tmp_path / "broker.sock"
    text = config_text(sandbox, server=f'listen = ["unix:{sock}"]').replace(
        'listen = ["127.0.0.1:0"]\n', ""
    )
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret})
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    import io

    from broker.observe.logs import make_logger

    task = asyncio.create_task(
        serve(settings, stop=stop, on_ready=ready.set_result, log=make_logger(stream=io.StringIO()))
    )
    await ready
    await sandbox.state.wait_calls("partner", 1)
    yield sock
    stop.set()
    assert await task == 0


async def cli(*argv: str) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, main, list(argv))


async def test_token_prints_the_bare_token(running: Path, capsys) -> None:
    """`token` prints only the token on stdout, for $(...)."""
    assert await cli("token", "--socket", str(running)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("eyJ") and " " not in out.strip()
    assert await cli("token", "default", "--kind", "aad", "--socket", str(running)) == 0
    assert capsys.readouterr().out.strip() != out.strip()


async def test_token_failure_is_one_line_on_stderr(running: Path, capsys) -> None:
    """An unknown profile: exit 1, one line on stderr, nothing on stdout."""
    assert await cli("token", "nope", "--socket", str(running)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "unknown_profile" in captured.err


async def test_status_shows_a_table_without_tokens(running: Path, capsys) -> None:
    """`status` prints one row per profile and kind: state, expiry, calls; never a token."""
    assert await cli("status", "--socket", str(running)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["PROFILE", "KIND", "STATE"]
    assert "default  partner  fresh" in out and "ok=1" in out
    assert "eyJ" not in out


async def test_healthcheck_exit_codes(running: Path, tmp_path: Path) -> None:
    """healthcheck: 0 when ready, 3 when nothing answers."""
    assert await cli("healthcheck", "--socket", str(running)) == 0
    assert await cli("healthcheck", "--live", "--socket", str(running)) == 0
    assert await cli("healthcheck", "--socket", str(tmp_path / "none.sock")) == 3


async def test_serve_stops_cleanly_on_sigterm(sandbox, secret, tmp_path: Path) -> None:
    """`serve` as a real process: serves a token, then SIGTERM → exit 0 within seconds."""
    sock = tmp_path / "b.sock"
    config = tmp_path / "broker.toml"
    config.write_text(
        config_text(sandbox, server=f'listen = ["unix:{sock}"]').replace(
            'listen = ["127.0.0.1:0"]\n', ""
        )
    )
    env = {**os.environ, "TEST_CLIENT_SECRET": secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--config",
        str(config),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        while True:  # wait for the "listening" log line, not for a guessed duration
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert line, "serve exited early"
            if json.loads(line)["event"] == "listening":
                break
        assert await cli("token", "--socket", str(sock)) == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        rest = (await proc.stderr.read()).decode()
        assert '"stopped"' in rest and secret not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    """`serve` refuses a broken config with exit 2 and the problem on stderr."""
    config = tmp_path / "broker.toml"
    config.write_text("[server]\nlisten = 5\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"server.listen: must be a non-empty list of strings" in err
    assert b"Traceback" not in err


async def test_demo_holds_its_guarantees(capsys) -> None:
    """`pc-token-broker demo` (what `make demo` runs) exits 0 and reports every check as ok."""
    from broker.cli.demo import run_demo

    assert await run_demo() == 0
    out = capsys.readouterr().out
    assert "result: guarantees held" in out and "FAILED" not in out
    assert "token_served" not in out  # audit lines go to the demo's log file, named up front
    log_file = Path(out.split("the broker's log and audit lines: ")[1].split()[0])
    assert '"token_served"' in log_file.read_text()
    log_file.unlink()
    assert out.count(" s: ") >= 4  # live progress while the phases run
    assert "worst ms of the cold start: all 300 callers wait" in out
