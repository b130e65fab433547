"""The command line as operators and tool authors use it: token, status, healthcheck, finding
the daemon, failing loudly, --json, refresh, exec, help, completion, check-config's diagnostics,
serve and SIGTERM, and the demo.

Client commands run through `main()` (the console script's entry point) in a worker thread
against a real daemon (server.serve, in this loop) on loopback and a unix socket, the sandbox as
upstream; commands that replace or own the process (`exec`, `serve`) run as real subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli.main import main, parser
from broker.config.load import parse_settings
from broker.daemon.server import serve
from tests.conftest import config_text
from tests.support import ROOT, serve_process


async def cli(*argv: str) -> int:
    return await asyncio.get_running_loop().run_in_executor(None, main, list(argv))


def daemon_config(sandbox, sock: Path, *, extra: str = "", profiles: str | None = None) -> str:
    return config_text(
        sandbox, server=f'listen = ["127.0.0.1:0", "unix:{sock}"]\n{extra}', profiles=profiles
    ).replace('listen = ["127.0.0.1:0"]\n', "", 1)


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


@pytest.fixture
async def daemon(sandbox, secret, tmp_path: Path, run_server):
    """A daemon on a free TCP port and a unix socket; returns (base URL, socket path)."""
    sock = tmp_path / "broker.sock"
    text = daemon_config(sandbox, sock, profiles="[profiles.default]\n[profiles.billing]\n")
    addresses, _ = await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    await sandbox.state.wait_calls("partner", 2)  # both warm profiles hold tokens
    tcp = next(a for a in addresses if not a.startswith("unix:"))
    return f"http://{tcp}", sock


@pytest.fixture(autouse=True)
def no_target_env(monkeypatch) -> None:
    """The developer's own variables must not steer these tests."""
    for name in (
        "PC_TOKEN_BROKER_URL",
        "PC_TOKEN_BROKER_SOCKET",
        "PC_TOKEN_BROKER_HEADER",
        "PC_TOKEN_BROKER_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)


# -- token, status and healthcheck against a running daemon; serve; the demo -------------------


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
    proc = await serve_process(
        config,
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
    proc = await serve_process(
        config,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"server.listen: must be a non-empty list of strings" in err
    assert b"Traceback" not in err


async def test_demo_holds_its_guarantees(capsys) -> None:
    """`pc-token-broker demo` (what `make demo` runs) exits 0 and reports every check as ok."""
    from broker.cli.demo import run_demo

    assert await run_demo(keep_log=True) == 0
    out = capsys.readouterr().out
    assert "result: guarantees held" in out and "FAILED" not in out
    assert "token_served" not in out  # audit lines go to the demo's log file, named up front
    log_file = Path(out.split("the broker's log and audit lines: ")[1].split()[0])
    assert '"token_served"' in log_file.read_text()
    log_file.unlink()
    assert out.count(" s: ") >= 4  # live progress while the phases run
    assert "worst ms of the cold start: all 300 callers wait" in out


@pytest.mark.parametrize(
    ("result", "keep_log", "kept"),
    [(0, False, False), (0, True, True), (1, False, True)],
    ids=["held-removed", "asked-to-keep", "a-guarantee-failed-kept"],
)
async def test_the_demos_log_is_removed_unless_kept_or_needed(
    result, keep_log, kept, monkeypatch
) -> None:
    """The demo's log file (several MB) is gone after a run whose guarantees held, unless
    --keep-log; when a guarantee fails it stays, as the thing to read."""
    from broker.cli import demo

    written: list[str] = []

    async def quick_run(secret, logs, keep) -> int:
        logs.write('{"event": "token_served"}\n')
        written.append(logs.name)
        return result

    monkeypatch.setattr(demo, "_run", quick_run)
    assert await demo.run_demo(keep_log=keep_log) == result
    (name,) = written
    assert Path(name).exists() is kept
    Path(name).unlink(missing_ok=True)


# -- healthcheck and status fail loudly --------------------------------------------------------


async def test_healthcheck_not_ready_says_why_in_one_line(
    sandbox, secret, tmp_path: Path, run_server, capsys
) -> None:
    sandbox.state.fail("aad", 401, times=None)
    sock = tmp_path / "b.sock"
    await run_server(
        parse_settings(daemon_config(sandbox, sock), env={"TEST_CLIENT_SECRET": secret})
    )
    await sandbox.state.wait_calls("aad", 1)
    assert await cli("healthcheck", "--socket", str(sock)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pc-token-broker: not ready (HTTP 503")
    assert "default partner" in err
    assert await cli("healthcheck", "--live", "--socket", str(sock)) == 0


async def test_status_exits_1_while_a_profile_fails(
    sandbox, secret, tmp_path: Path, run_server, capsys
) -> None:
    sandbox.state.fail("aad", 401, times=None)
    sock = tmp_path / "b.sock"
    await run_server(
        parse_settings(daemon_config(sandbox, sock), env={"TEST_CLIENT_SECRET": secret})
    )
    assert await cli("token", "--socket", str(sock)) == 1  # the failure is now remembered
    capsys.readouterr()
    assert await cli("status", "--socket", str(sock)) == 1
    out, err = capsys.readouterr()
    assert "default  partner  failing" in out  # the table is still printed
    assert err.count("\n") == 1 and "default partner failing (upstream_refused" in err
    assert await cli("status", "--json", "--socket", str(sock)) == 1
    out, _ = capsys.readouterr()
    assert json.loads(out)["profiles"]["default"]["aad"]["state"] == "failing"


async def test_status_json_and_exit_0_when_all_is_well(daemon, capsys) -> None:
    url, _ = daemon
    assert await cli("status", "--json", "--url", url) == 0
    out, err = capsys.readouterr()
    profiles = json.loads(out)["profiles"]
    assert set(profiles) == {"default", "billing"} and err == ""
    assert profiles["billing"]["partner"]["state"] == "fresh"
    assert "eyJ" not in out


# -- a bad --config is exit 2; the variables for tools -----------------------------------------


async def test_explicit_config_missing_or_not_toml_is_exit_2(
    daemon, tmp_path: Path, monkeypatch, capsys
) -> None:
    url, _ = daemon
    missing = tmp_path / "nope.toml"
    for command in ("token", "status", "healthcheck", "refresh"):
        assert await cli(command, "--config", str(missing)) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert f"{missing}: cannot read: No such file or directory" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nlisten = 1\n")
    assert await cli("token", "--config", str(broken)) == 2
    assert "not valid TOML" in capsys.readouterr().err
    # Named by $PC_TOKEN_BROKER_CONFIG is named explicitly too, even with a URL to go to.
    monkeypatch.setenv("PC_TOKEN_BROKER_CONFIG", str(missing))
    assert await cli("token", "--url", url) == 2
    assert "cannot read" in capsys.readouterr().err


async def test_a_hostile_config_for_the_client_is_exit_2_not_a_traceback(
    tmp_path: Path, capsys
) -> None:
    """The client commands read [server] of --config themselves: a config nested too deeply
    for tomllib, not UTF-8, larger than a config can be, or a device that never ends
    (/dev/zero) is one line and exit 2, never a RecursionError or a read until memory runs
    out."""
    cases = {
        "deep.toml": (b"[server]\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        "binary.toml": (b'[server]\nlisten = ["\xff"]\n', "not valid TOML"),
        "huge.toml": (b"[server]\n#" + b"x" * (2 << 20) + b"\n", "larger than 1048576 bytes"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    paths = [(str(tmp_path / name), words) for name, (_, words) in cases.items()]
    for path, words in [*paths, ("/dev/zero", "not a regular file")]:
        for command in ("token", "status"):
            assert await cli(command, "--config", path) == 2, (command, path)
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1 and words in err, (path, err[-300:])


async def test_a_readable_config_gives_the_address_and_header(
    daemon, tmp_path: Path, capsys
) -> None:
    _, sock = daemon
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\nlisten = ["unix:{sock}"]\nrequired_header = "Metadata: true"\n')
    assert await cli("token", "--config", str(config)) == 0
    assert capsys.readouterr().out.startswith("eyJ")
    config.write_text(f'[server]\nlisten = ["unix:{sock}"]\nrequired_header = "X-Other: 1"\n')
    assert await cli("token", "--config", str(config)) == 1  # the daemon wants Metadata
    assert "HTTP 400" in capsys.readouterr().err


async def test_environment_variables_point_tools_at_the_daemon(daemon, monkeypatch, capsys) -> None:
    url, sock = daemon
    monkeypatch.setenv("PC_TOKEN_BROKER_URL", url)
    assert await cli("token") == 0  # the default config path does not exist here
    assert capsys.readouterr().out.startswith("eyJ")
    monkeypatch.delenv("PC_TOKEN_BROKER_URL")
    monkeypatch.setenv("PC_TOKEN_BROKER_SOCKET", str(sock))
    assert await cli("status") == 0
    assert "default  partner  fresh" in capsys.readouterr().out
    monkeypatch.setenv("PC_TOKEN_BROKER_HEADER", "Metadata: false")
    assert await cli("token") == 1
    assert "HTTP 400" in capsys.readouterr().err
    monkeypatch.setenv("PC_TOKEN_BROKER_HEADER", "no colon")
    assert await cli("token") == 2
    assert "PC_TOKEN_BROKER_HEADER: must look like 'Name: value'" in capsys.readouterr().err


# -- --url without a scheme --------------------------------------------------------------------


async def test_url_without_scheme_works_and_a_wrong_one_is_exit_2(daemon, capsys) -> None:
    url, sock = daemon
    assert await cli("token", "--url", url.removeprefix("http://")) == 0
    assert capsys.readouterr().out.startswith("eyJ")
    assert await cli("token", "--url", f"unix:{sock}") == 0
    assert capsys.readouterr().out.startswith("eyJ")
    for bad in ("ftp://127.0.0.1:1", "http://", "127.0.0.1:99999", "unix:relative.sock"):
        assert await cli("token", "--url", bad) == 2, bad
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "--url" in err, err


async def test_unreachable_names_where_it_looked(tmp_path: Path, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await cli("token", "--url", f"127.0.0.1:{port}") == 3
    err = capsys.readouterr().err
    assert f"cannot reach the broker at http://127.0.0.1:{port}" in err and err.count("\n") == 1


# -- the client features --------------------------------------------------------------------


async def test_token_json_carries_the_expiry(daemon, capsys) -> None:
    url, _ = daemon
    assert await cli("token", "billing", "--kind", "aad", "--json", "--url", url) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["access_token"].startswith("eyJ")
    assert answer["profile"] == "billing" and answer["kind"] == "aad"
    assert answer["expires_in"] > 60 and answer["expires_on"] > 1.7e9


async def test_refresh_fetches_anew_and_is_rate_limited(daemon, sandbox, capsys) -> None:
    url, _ = daemon
    before = sandbox.state.counts["partner"]
    assert await cli("refresh", "billing", "--url", url) == 0
    out = capsys.readouterr().out
    assert out.startswith("billing partner: refreshed, expires in ") and "Z)" in out
    assert "eyJ" not in out
    assert sandbox.state.counts["partner"] == before + 1
    assert await cli("refresh", "billing", "--json", "--url", url) == 1  # within 10 s
    out, err = capsys.readouterr()
    assert out == "" and "HTTP 429: too_many_refreshes" in err
    assert await cli("refresh", "default", "--kind", "aad", "--json", "--url", url) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["refreshed"] is True and answer["kind"] == "aad"


async def test_profile_names_are_quoted_into_the_path(daemon, capsys) -> None:
    url, _ = daemon
    assert await cli("token", "../metrics", "--url", url) == 1
    assert "unknown_profile" in capsys.readouterr().err


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_exec_runs_the_command_with_the_token_in_its_environment(daemon) -> None:
    _, sock = daemon
    show = (
        "import os, sys; t = os.environ['PC_ACCESS_TOKEN']; "
        "print(t[:3], len(t) > 100, int(os.environ['PC_ACCESS_TOKEN_EXPIRES_ON']) > 1.7e9); "
        "sys.exit(7)"
    )
    code, out, err = await run("exec", "--socket", str(sock), "--", sys.executable, "-c", show)
    assert (code, out, err) == (7, "eyJ True True\n", "")  # the command's own exit code
    code, out, _ = await run(
        "exec",
        "billing",
        "--kind",
        "aad",
        "--var",
        "AAD",
        "--socket",
        str(sock),
        "--",
        sys.executable,
        "-c",
        "import os; print('AAD' in os.environ, 'PC_ACCESS_TOKEN' in os.environ)",
    )
    assert (code, out) == (0, "True False\n")


async def test_exec_failures(daemon, capsys) -> None:
    """Failures before the exec happen in this process (nothing is replaced): main() is safe."""
    _, sock = daemon
    assert await cli("exec", "--socket", str(sock), "--", "no-such-command-here") == 127
    out, err = capsys.readouterr()
    assert out == "" and err == "pc-token-broker: exec: no-such-command-here: command not found\n"
    assert await cli("exec", "nope", "--socket", str(sock), "--", "true") == 1
    assert "unknown_profile" in capsys.readouterr().err  # no token: the command never runs
    for argv, message in (
        (["exec", "--socket", str(sock)], "exec needs a command after --"),
        (["token", "--socket", str(sock), "--", "x"], "'--' is only for exec"),
        (["exec", "--var", "A=B", "--", "true"], "--var: not an environment variable name"),
        (["exec", "--var", "", "--", "true"], "--var: not an environment variable name"),
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2 and message in capsys.readouterr().err


# -- help, version, completion --------------------------------------------------------------


def test_version_and_help_for_every_command(capsys) -> None:
    from broker import __version__

    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
        assert capsys.readouterr().out == f"pc-token-broker {__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for section in ("exit codes:", "environment:", "PC_TOKEN_BROKER_URL", "files:", "examples:"):
        assert section in top
    commands = next(a for a in parser()._actions if a.dest == "command").choices
    assert len(commands) >= 11
    for name, sub in commands.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "example:\n  " in text and "pc-token-broker" in text.split("example:")[1], name
        for action in sub._actions:  # every option that takes a value says its default
            if (
                action.option_strings
                and action.nargs != 0
                and "--help" not in action.option_strings
            ):
                assert "(default: " in (action.help or ""), (name, action.option_strings)


def test_bash_completion_completes_commands_options_and_choices(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is part of every machine this runs on"
    script = tmp_path / "completion.bash"
    generated = subprocess.run(
        [sys.executable, "-m", "broker", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    )
    script.write_text(generated.stdout)

    def complete(*words: str) -> list[str]:
        array = " ".join(f"'{w}'" for w in ("pc-token-broker", *words))
        program = (
            f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
            '_pc_token_broker; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run([bash, "-c", program], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert complete("to") == ["token"]
    assert set(complete("")) >= {"serve", "token", "exec", "refresh", "status", "--version"}
    assert complete("token", "--kind", "") == ["partner", "aad"]
    assert complete("serve", "--log-level", "w") == ["warning"]
    assert set(complete("status", "--")) == {
        *("--help", "--json", "--url", "--socket", "--config", "--timeout")
    }
    assert complete("check-config", "--off") == ["--offline"]


def test_zsh_completion_is_the_bash_function_through_bashcompinit(capsys) -> None:
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert main(["completion", "bash"]) == 0
    assert zsh.endswith(capsys.readouterr().out)
    assert "bashcompinit && bashcompinit" in zsh


# -- check-config ------------------------------------------------------------------------------

PROFILE = """
[profiles.default]
tenant_id = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
"""


@pytest.fixture
def check(capsys, monkeypatch):
    """`check-config --config PATH [extra]` through main(): (exit code, stdout, stderr)."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)

    def run_check(config: Path, *extra: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["check-config", "--config", str(config), *extra])
        out, err = capsys.readouterr()
        return code, out, err

    return run_check


def test_check_config_did_you_mean_and_line_order(tmp_path: Path, check) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[server]\n"  # 1
        "listen = 5\n"  # 2
        + PROFILE  # 3-6
        + 'client_secret_flie = "/x"\n'  # 7
        "warm = 3\n"  # 8
        "[mirror]\n"  # 9
        "max_entires = 3\n"  # 10
    )
    code, out, err = check(config)
    assert code == 2 and out == ""
    lines = err.splitlines()[1:]
    assert [int(line.split(":")[1]) for line in lines] == sorted(
        int(line.split(":")[1]) for line in lines
    ), err
    assert "c.toml:7: profiles.default.client_secret_flie: unknown key; did you mean " in err
    assert "'client_secret_file'?" in err
    assert "c.toml:10: mirror.max_entires: unknown key; did you mean 'max_entries'?" in err
    assert "c.toml:2: server.listen" in lines[0]


def test_check_config_summary_names_the_authority_and_customer_tenants(
    tmp_path: Path, check, monkeypatch
) -> None:
    """The summary shows where each profile's tokens come from: its authority, and for a
    customer-tenant profile the tenants and scopes it serves."""
    monkeypatch.setenv("RT", "a-refresh-token-value")
    config = tmp_path / "c.toml"
    (tmp_path / "rt").write_text("a-refresh-token-value")
    (tmp_path / "rt").chmod(0o600)
    config.write_text(
        PROFILE
        + 'credential = "refresh_token"\n'
        + f'refresh_token_file = "{tmp_path}/rt"\n'
        + 'customer_tenants = ["fabrikam.onmicrosoft.com", "contoso.example"]\n'
        + 'customer_scopes = ["https://graph.microsoft.com/.default"]\n'
    )
    code, out, err = check(config, "--offline")
    assert code == 0, err
    assert "authority https://login.microsoftonline.com; scope " in out
    assert (
        "customer tenants fabrikam.onmicrosoft.com, contoso.example; scopes https://graph.microsoft.com/.default"
        in out
    )


def test_check_config_empty_file_is_an_error(tmp_path: Path, check) -> None:
    for text in ("", "\n# only a comment\n"):
        config = tmp_path / "empty.toml"
        config.write_text(text)
        code, _, err = check(config)
        assert code == 2 and "the file is empty or only comments" in err


def test_check_config_warns_on_a_secret_file_others_can_read(tmp_path: Path, check) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cr3t-value-never-printed")
    config = tmp_path / "c.toml"
    config.write_text(PROFILE + f'client_secret_file = "{secret}"\n')
    secret.chmod(0o644)
    code, out, _ = check(config)
    assert code == 0
    assert f"holds a secret and others can read it (mode 0644); chmod 600 {secret}" in out
    secret.chmod(0o640)
    assert "its group can read it (mode 0640)" in check(config)[1]
    secret.chmod(0o600)
    code, out, _ = check(config)
    assert code == 0 and "warning" not in out
    assert "s3cr3t-value" not in out


def test_check_config_says_how_to_convert_pkcs12_and_der(tmp_path: Path, check) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    from tests.support import make_certificate

    pem, cert_pem = make_certificate()
    key = serialization.load_pem_private_key(pem, None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    files = {
        "app.pfx": pkcs12.serialize_key_and_certificates(
            b"app", key, cert, None, serialization.NoEncryption()
        ),
        "app.cer": cert.public_bytes(serialization.Encoding.DER),
        "app.key": key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "junk.bin": b"\x00\x01 not a certificate at all",
    }
    expected = {
        "app.pfx": "a PKCS#12 (.pfx/.p12) file, not PEM: convert it with `openssl pkcs12 -in",
        "app.cer": "a DER certificate, not PEM",
        "app.key": "a DER private key, not PEM",
        "junk.bin": "not a PEM file (no -----BEGIN line)",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        config = tmp_path / "c.toml"
        config.write_text(
            PROFILE + f'credential = "certificate"\ncertificate_file = "{tmp_path / name}"\n'
        )
        code, _, err = check(config)
        assert code == 2 and expected[name] in err, (name, err)
        assert "profiles.default.certificate_file" in err


def test_check_config_summary_has_an_msi_line(tmp_path: Path, check) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    secret.chmod(0o600)
    config = tmp_path / "c.toml"
    config.write_text(PROFILE + f'client_secret_file = "{secret}"\n')
    assert "  msi:             off (no [msi] table)" in check(config)[1]
    config.write_text(
        PROFILE + f'client_secret_file = "{secret}"\n[msi]\n'
        f'generated_header_file = "{tmp_path}/identity-header"\n'
    )
    code, out, _ = check(config)
    assert code == 0
    assert f"  msi:             on, profile default, header written to {tmp_path}" in out


def test_check_config_offline_reads_no_secret_file(tmp_path: Path, check) -> None:
    """--offline: syntax, types and keys only; missing files and variables are the host's."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nupstream_proxy = "http://127.0.0.1:3128"\n'
        + f'upstream_proxy_credentials_file = "{tmp_path}/proxy-credentials"\n'
        + f'[shared]\nredis_url = "redis://127.0.0.1:6379/0"\nkey_file = "{tmp_path}/key"\n'
        + PROFILE
        + 'client_secret_file = "${CREDENTIALS_DIRECTORY}/client-secret"\n'
        + 'allowed_uids = ["no-such-user-here"]\n'
        + "[profiles.other]\n"
        + 'tenant_id = "t"\nclient_id = "c"\nclient_secret_env = "SURELY_UNSET_VARIABLE"\n'
        + "[profiles.cert]\n"
        + 'tenant_id = "t"\nclient_id = "c"\ncredential = "certificate"\n'
        + f'certificate_file = "{tmp_path}/missing.pem"\n'
    )
    code, _, err = check(config)
    assert code == 2
    assert "CREDENTIALS_DIRECTORY is not set" in err and "SURELY_UNSET_VARIABLE" in err
    assert "no user named 'no-such-user-here'" in err and "missing.pem" in err
    assert "proxy-credentials" in err and f"{tmp_path}/key" in err
    code, out, err = check(config, "--offline")
    assert (code, err) == (0, "")
    assert "OK (offline: no secret files, environment or host lookups)" in out
    assert "file ${CREDENTIALS_DIRECTORY}/client-secret" in out
    # Offline still checks what the file itself says.
    config.write_text(PROFILE + 'client_secret_flie = "x"\nwarm = "yes"\n')
    code, _, err = check(config, "--offline")
    assert code == 2 and "did you mean 'client_secret_file'?" in err and "warm" in err


def test_check_config_unix_socket_in_a_missing_directory(tmp_path: Path, check, capsys) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    secret.chmod(0o600)
    config = tmp_path / "c.toml"
    sock = tmp_path / "no-such-dir" / "broker.sock"
    config.write_text(
        f'[server]\nlisten = ["unix:{sock}"]\n' + PROFILE + f'client_secret_file = "{secret}"\n'
    )
    code, _, err = check(config)
    assert code == 2
    assert f"c.toml:2: server.listen: unix:{sock}: the directory {sock.parent} does not" in err
    assert main(["serve", "--config", str(config)]) == 2  # serve says the same, and exits 2
    assert f"the directory {sock.parent} does not exist" in capsys.readouterr().err
    (tmp_path / "no-such-dir").mkdir()
    assert check(config)[0] == 0


# -- msi-env needs no profile secret -----------------------------------------------------------


def test_msi_env_needs_only_server_msi_and_the_header_file(tmp_path: Path, check, capsys) -> None:
    header = tmp_path / "identity-header"
    header.write_text("the-identity-header-value")
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nlisten = ["127.0.0.1:8721"]\n'
        + PROFILE
        + f'client_secret_file = "{tmp_path}/missing-secret"\n'
        + "[profiles.billing]\n"
        + 'tenant_id = "t"\nclient_id = "11111111-1111-1111-1111-111111111111"\n'
        + 'client_secret_env = "SURELY_UNSET_VARIABLE"\n'
        + f'[msi]\ngenerated_header_file = "{header}"\n'
    )
    assert check(config)[0] == 2  # the daemon could not start with it; msi-env does not care
    capsys.readouterr()
    assert main(["msi-env", "billing", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "export IDENTITY_ENDPOINT=http://127.0.0.1:8721/msi/token",
        "export IDENTITY_HEADER=the-identity-header-value",
        "export AZURE_CLIENT_ID=11111111-1111-1111-1111-111111111111",
    ]
    header.unlink()  # the header file is the one thing it needs
    assert main(["msi-env", "--config", str(config)]) == 2
    assert f"cannot read {header}" in capsys.readouterr().err


# -- serve: --log-level, and the socket file goes at clean shutdown ----------------------------


def test_socket_file_of_a_successor_is_left_alone(tmp_path: Path) -> None:
    """Shutdown removes only the socket file this process bound, not one bound since."""
    from broker.config.listen import Listen
    from broker.daemon.listeners import bind, remove_socket_file, socket_file

    path = tmp_path / "b.sock"
    first = bind(Listen.unix(str(path)))
    identity = socket_file(first)
    assert identity is not None
    first.close()
    path.unlink()
    second = bind(Listen.unix(str(path)))  # a new broker took the path over
    remove_socket_file(identity)
    assert path.is_socket()
    remove_socket_file(socket_file(second))  # type: ignore[arg-type]
    assert not path.exists()
    second.close()


# -- make is quiet about pythons it cannot run -------------------------------------------------


def test_make_prints_no_noise_from_python_shims(tmp_path: Path) -> None:
    """pyenv's shims answer `command -v python3.13` and then fail loudly: make stays quiet."""
    make = shutil.which("make")
    assert make, "make is one of the two tools the README requires"
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12"):
        shim = shims / name
        shim.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
        shim.chmod(0o755)
    real = shims / "python3.11"
    real.symlink_to(sys.executable)
    done = subprocess.run(
        [make, "-n", "-C", str(ROOT), "demo", f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{shims}:/usr/bin:/bin"},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "--python python3.11 " in done.stdout  # the venv is made with the first that runs


def test_status_names_settings_waiting_for_a_restart() -> None:
    from broker.cli.summary import restart_line

    assert restart_line([]) == "" and restart_line(None) == ""
    assert restart_line(["listen", "log_level"]) == (
        "warning: restart pending for listen, log_level: the process still runs the old values"
    )


async def test_status_shows_a_pending_restart_after_reload(sandbox, secret, tmp_path, capsys):
    """`serve` as a real process: --log-level error hides the config's info lines (the README
    test runs `serve --log-level info` and sees them); after a reload that changes `listen`,
    `status` says a restart is pending; SIGTERM exits 0 and removes the socket file."""
    sock = tmp_path / "b.sock"
    config = tmp_path / "broker.toml"
    text = config_text(sandbox, server=f'listen = ["unix:{sock}"]').replace(
        'listen = ["127.0.0.1:0"]\n', ""
    )
    config.write_text(text)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    env = {**os.environ, "TEST_CLIENT_SECRET": secret, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = await serve_process(
        config,
        "--log-level",
        "error",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()

    async def wait_for(word: bytes) -> None:
        while word not in await asyncio.wait_for(loop.sock_recv(notify, 4096), 20):
            pass

    try:
        await wait_for(b"READY=1")
        assert await cli("status", "--socket", str(sock)) == 0
        assert "restart pending" not in capsys.readouterr().out
        config.write_text(text.replace(f'"unix:{sock}"', f'"unix:{sock}", "127.0.0.1:0"'))
        proc.send_signal(signal.SIGHUP)
        await wait_for(b"RELOADING=1")
        await wait_for(b"READY=1")  # again, once the reload is done
        assert await cli("status", "--socket", str(sock)) == 0
        assert "warning: restart pending for listen" in capsys.readouterr().out
        assert sock.is_socket()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
    finally:
        notify.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not sock.exists()  # removed at clean shutdown
    assert '"listening"' not in logs and '"stopped"' not in logs and secret not in logs


async def test_error_line_carries_what_microsoft_support_asks_for(
    sandbox, tmp_path: Path, run_server, capsys
) -> None:
    """A refused secret: the CLI's one line names the AADSTS code and the ids."""
    import re

    sock = tmp_path / "b.sock"
    wrong = parse_settings(daemon_config(sandbox, sock), env={"TEST_CLIENT_SECRET": "wrong-one"})
    await run_server(wrong)
    assert await cli("token", "--socket", str(sock)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(upstream status 401, AADSTS" in err
    assert re.search(r"AADSTS\d+, correlation id [0-9a-f-]{36}, trace id [0-9a-f-]{36}\)", err), err
    assert await cli("status", "--socket", str(sock)) == 1
    err = capsys.readouterr().err
    assert re.search(
        r"default partner failing \(upstream_refused, upstream status 401, AADSTS", err
    )


# -- a hostile or broken "broker" on the other end ------------------------------------------


@pytest.fixture
async def impostor():
    """A server on loopback that answers every request with what the test sets."""
    from aiohttp import web

    answer: dict = {"status": 200, "body": b"{}"}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=answer["status"], body=answer["body"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield answer, f"127.0.0.1:{port}"
    await runner.cleanup()


async def test_hostile_answers_never_reach_stdout_or_the_terminal(impostor, capsys) -> None:
    answer, url = impostor
    cases = [
        (200, b"not json at all"),
        (200, b"\xff\xfe\x00 binary"),
        (200, json.dumps({"access_token": "eyJabc\nrm -rf /"}).encode()),
        (200, json.dumps({"access_token": "abc\x00def" * 4}).encode()),
        (200, json.dumps({"access_token": 12345}).encode()),
        (200, json.dumps([1, 2, 3]).encode()),
        (200, b"[" * 100_000),
        (200, b"A" * (3 << 20)),
    ]
    for status, body in cases:
        answer.update(status=status, body=body)
        for argv in (["token"], ["token", "--json"], ["exec", "--url", url, "--", "true"]):
            code = await cli(*argv, *([] if "exec" in argv else ["--url", url]))
            out, err = capsys.readouterr()
            assert code == 1 and out == "", (argv, body[:30])
            assert err.count("\n") == 1 and "Traceback" not in err
    answer.update(
        status=502,
        body=json.dumps(
            {"error": {"code": "x\x1b[2J", "message": "line one\nline two\x07", "aadsts": "1"}}
        ).encode(),
    )
    assert await cli("token", "--url", url) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\x07" not in err
    assert "line one line two" in err
    answer.update(status=503, body=b"[" * 100_000)
    for argv in (["token"], ["healthcheck"], ["status"], ["refresh"]):
        assert await cli(*argv, "--url", url) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "HTTP 503" in err
    answer.update(status=200, body=json.dumps({"profiles": "nope"}).encode())
    assert await cli("status", "--url", url) == 1
    assert "no profiles table" in capsys.readouterr().err


def test_docs_command_table_names_every_command() -> None:
    """The docs' command table (docs/use/cli.md) and the parser cannot drift apart."""
    from broker.cli.parser import commands

    page = (ROOT / "docs/use/cli.md").read_text()
    table = page.split("## The commands")[1].split("## Finding the daemon")[0]
    for name in commands():
        assert re.search(rf"(\| |, )`{re.escape(name)}[ `]", table), name
