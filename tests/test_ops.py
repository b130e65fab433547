"""Operations: systemd notify and watchdog, socket activation, SIGHUP reload (and the configs
it refuses), SIGTERM during a slow refresh, and the unit files' verification and hardening
score. The daemon runs as a real process; the sandbox runs in the test."""

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
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import HEADERS, config_text
from tests.support import ROOT, Daemon, serve_process, unix_config  # noqa: F401

UNIT = ROOT / "systemd" / "pc-token-broker.service"
SOCKET_UNIT = ROOT / "systemd" / "pc-token-broker.socket"


async def get(sock: Path, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.get(f"http://localhost{path}", headers=HEADERS) as r:
            return r.status, await r.json()


async def test_notify_ready_after_binding_and_watchdog_pings(sandbox, daemon, tmp_path):
    """Under a fake NOTIFY_SOCKET: READY=1 (with STATUS) once the socket is bound, then
    WATCHDOG=1 pings at half of WATCHDOG_USEC, sent from the event loop."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    sock = tmp_path / "b.sock"
    d = await daemon(
        unix_config(sandbox, sock),
        env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"},
    )
    loop = asyncio.get_running_loop()
    messages: list[str] = []
    while sum("WATCHDOG=1" in m for m in messages) < 3:
        data = await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)
        messages.append(data.decode())
        if "READY=1" in messages[-1]:
            assert sock.exists()  # bound before READY
            assert (await get(sock, "/healthz"))[0] == 200
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=listening on unix:" in ready and "1 profiles" in ready
    assert messages.index(ready) == 0
    assert await d.stop() == 0
    notify.close()


async def test_socket_activation_hands_over_the_listener(sandbox, daemon, tmp_path):
    """systemd-socket-activate owns the socket; the daemon takes it from LISTEN_FDS and serves
    a token through it (its own server.listen is ignored)."""
    activator = shutil.which("systemd-socket-activate")
    assert activator, "systemd-socket-activate is part of systemd, installed on our machines"
    sock = tmp_path / "activated.sock"
    config = unix_config(sandbox, tmp_path / "unused.sock")
    d = await daemon(
        config, activator, "-l", str(sock), "-E", "TEST_CLIENT_SECRET", "-E", "PYTHONPATH"
    )
    # The activator binds, then listens: between the two a connect is refused. Wait (bounded)
    # until it accepts; that first connection spawns the daemon.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            status, body = await get(sock, "/v1/token")
            break
        except (aiohttp.ClientConnectorError, FileNotFoundError):
            assert asyncio.get_running_loop().time() < deadline, "the activator never listened"
            await asyncio.sleep(0.01)
    assert status == 200 and body["access_token"].startswith("ey")
    assert (await d.wait_for("socket_activation"))["sockets"] == 1
    assert not (tmp_path / "unused.sock").exists()
    assert await d.stop() == 0


async def test_sighup_reload(sandbox, daemon, tmp_path):
    """SIGHUP with a new profile serves it; SIGHUP with a broken config keeps serving the old
    profiles and logs one line saying why."""
    sock = tmp_path / "b.sock"
    config_path = tmp_path / "broker.toml"
    d = await daemon(unix_config(sandbox, sock))
    await d.wait_for("listening")
    assert (await get(sock, "/v1/token/extra"))[0] == 404
    config_path.write_text(unix_config(sandbox, sock, "[profiles.default]\n[profiles.extra]\n"))
    d.proc.send_signal(signal.SIGHUP)
    reloaded = await d.wait_for("reloaded")
    assert reloaded["added"] == ["extra"] and reloaded["removed"] == []
    assert (await get(sock, "/v1/token/extra"))[0] == 200
    config_path.write_text("[server\nbroken =")
    d.proc.send_signal(signal.SIGHUP)
    refused = await d.wait_for("reload_refused")
    assert "(syntax)" in refused["problems"] and "kept" in refused["note"]
    assert (await get(sock, "/v1/token/extra"))[0] == 200
    assert (await get(sock, "/v1/token/default"))[0] == 200
    assert await d.stop() == 0


async def test_sigterm_during_a_slow_refresh_exits_0_within_the_bound(sandbox, daemon, tmp_path):
    """A caller waits on a 30 s upstream; SIGTERM stops the daemon, exit 0, within
    shutdown_timeout (1 s) plus a little."""
    sandbox.state.latency["partner"] = 30
    sock = tmp_path / "b.sock"
    d = await daemon(
        unix_config(
            sandbox, sock, "[profiles.default]\nwarm = false\n", server="shutdown_timeout = 1"
        ).replace("[defaults]", "[defaults]\nupstream_timeout = 60")
    )
    await d.wait_for("listening")
    caller = asyncio.create_task(get(sock, "/v1/token"))
    await sandbox.state.wait_calls("partner", 1)  # the slow refresh is under way
    started = time.monotonic()
    assert await d.stop() == 0
    assert time.monotonic() - started < 5
    with pytest.raises(aiohttp.ClientError):
        await caller  # it was cut off at the bound, not left hanging
    await d.wait_for("stopped")


async def test_sigterm_lets_a_request_in_flight_finish_with_its_answer(sandbox, daemon, tmp_path):
    """A caller waits on a 1.5 s upstream when SIGTERM arrives: it still gets its token (200),
    and then the daemon exits 0. (The request runs in its connection's task on Python 3.11:
    shutting down waits for that task as it waited for the request's own.)"""
    sandbox.state.latency["partner"] = 1.5
    sock = tmp_path / "b.sock"
    d = await daemon(
        unix_config(
            sandbox, sock, "[profiles.default]\nwarm = false\n", server="shutdown_timeout = 10"
        )
    )
    await d.wait_for("listening")
    caller = asyncio.create_task(get(sock, "/v1/token"))
    await sandbox.state.wait_calls("partner", 1)  # the request is in flight
    assert await d.stop() == 0
    status, body = await caller
    assert status == 200 and body["access_token"]


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is installed on our machines and in CI"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_units_verify_cleanly(tmp_path):
    """`systemd-analyze verify` finds nothing wrong with the service and socket units (with
    ExecStart pointed at this checkout's real console script)."""
    script = Path(sys.executable).with_name("pc-token-broker")
    assert script.exists()
    text = UNIT.read_text().replace("/opt/pc-token-broker/bin/pc-token-broker", str(script))
    (tmp_path / UNIT.name).write_text(text)
    shutil.copy(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)
    result = _systemd_analyze("verify", str(tmp_path / UNIT.name), str(tmp_path / SOCKET_UNIT.name))
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "pc-token-broker" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_service_hardening_score_is_at_most_1_3():
    """`systemd-analyze security --offline=true` rates the service 1.3 or better."""
    result = _systemd_analyze("security", "--offline=true", str(UNIT))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.3
    for setting in (
        "DynamicUser=yes",
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "RuntimeDirectory=",
        "ConfigurationDirectory=",
        "LoadCredential=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute=yes",
    ):
        assert setting in UNIT.read_text(), setting


async def test_a_huge_or_fifo_config_is_refused_on_reload(sandbox, secret, tmp_path):
    """SIGHUP with a config over 1 MiB (a 47 MB one stalled the loop for seconds), or with a
    FIFO in its place: the reload is refused in one log line, the running config kept."""
    sock = tmp_path / "b.sock"
    config = tmp_path / "broker.toml"
    text = config_text(sandbox).replace('listen = ["127.0.0.1:0"]', f'listen = ["unix:{sock}"]')
    config.write_text(text)
    proc = await serve_process(
        config,
        env={**os.environ, "TEST_CLIENT_SECRET": secret},
        stderr=asyncio.subprocess.PIPE,
    )

    async def wait_for(event: str) -> dict:
        assert proc.stderr is not None
        while line := await asyncio.wait_for(proc.stderr.readline(), 20):
            if f'"event": "{event}"' in line.decode():
                return json.loads(line)
        raise AssertionError(f"the daemon exited before {event}")

    try:
        await wait_for("listening")
        config.write_text(text + "#" * (2 << 20) + "\n")
        proc.send_signal(signal.SIGHUP)
        refused = await wait_for("reload_refused")
        assert "larger than 1048576 bytes" in refused["problems"]
        config.unlink()
        os.mkfifo(config)
        proc.send_signal(signal.SIGHUP)
        refused = await wait_for("reload_refused")
        assert "not a regular file" in refused["problems"]
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get("http://localhost/v1/token", headers=HEADERS) as r:
                assert r.status == 200
    finally:
        proc.terminate()
        await proc.wait()
