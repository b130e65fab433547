"""The daemon's own reporting, through its real runner: pending restarts after reloads, the
start-up banner, and the log lines operators read (audit, mirror, refusals)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp

from broker.cli.main import main
from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID, HEADERS, config_text
from tests.support import Daemon, request_json, unix_config


async def fetch(sock: Path, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.get(f"http://localhost{path}", headers=HEADERS) as r:
            return r.status, await r.text()


async def reload(d: Daemon) -> dict:
    d.proc.send_signal(signal.SIGHUP)
    return await d.next_event("reloaded")


async def test_a_pending_restart_is_reported_until_the_process_restarts(sandbox, daemon, tmp_path):
    """Compared with what the process runs, not with the last file read: a second SIGHUP still
    reports `listen`, /v1/profiles and the metric keep saying so, the socket stays the old one,
    and reverting the file clears it. Same for log_level."""
    sock, other = tmp_path / "b.sock", tmp_path / "other.sock"
    config_path = tmp_path / "broker.toml"
    original = unix_config(sandbox, sock)
    d = await daemon(original)
    banner = await d.wait_for("listening")
    assert banner["addresses"] == [f"unix:{sock}"]

    config_path.write_text(unix_config(sandbox, other))
    assert (await reload(d))["needs_restart"] == ["listen"]
    warning = await d.wait_for("restart_needed")
    assert warning["level"] == "warning" and warning["settings"] == ["listen"]
    assert (await reload(d))["needs_restart"] == ["listen"]  # still: the process did not move
    assert not other.exists()
    status, body = await fetch(sock, "/v1/profiles")
    assert status == 200 and json.loads(body)["restart_pending"] == ["listen"]
    _, metrics = await fetch(sock, "/metrics")
    assert 'broker_restart_pending{setting="listen"} 1.0' in metrics
    assert 'broker_restart_pending{setting="log_level"} 0.0' in metrics

    config_path.write_text(unix_config(sandbox, sock, server='log_level = "debug"'))
    assert (await reload(d))["needs_restart"] == ["log_level"]
    _, metrics = await fetch(sock, "/metrics")
    assert 'broker_restart_pending{setting="listen"} 0.0' in metrics
    assert 'broker_restart_pending{setting="log_level"} 1.0' in metrics

    config_path.write_text(original)
    assert (await reload(d))["needs_restart"] == []
    status, body = await fetch(sock, "/v1/profiles")
    assert json.loads(body)["restart_pending"] == []
    _, metrics = await fetch(sock, "/metrics")
    assert 'broker_restart_pending{setting="log_level"} 0.0' in metrics
    assert await d.stop() == 0


# -- numbers: whole seconds everywhere ---------------------------------------------------------


async def test_one_number_convention_whole_seconds_and_iso_expiry(sandbox, secret, run_server):
    """refresh, /v1/profiles and /v1/token all answer whole seconds (JSON integers, never
    3600.0); /v1/profiles and the refresh log line carry the expiry as ISO time too."""
    (address,), logs = await run_server(
        parse_settings(config_text(sandbox), env={"TEST_CLIENT_SECRET": secret})
    )
    status, token = await request_json(address, "/v1/token")
    assert status == 200 and type(token["expires_in"]) is int
    status, refreshed = await request_json(address, "/v1/token/default/refresh", "POST")
    assert status == 200, refreshed
    assert type(refreshed["expires_in"]) is int and type(refreshed["expires_on"]) is int
    assert refreshed["expires_at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(refreshed["expires_on"])
    )
    _, profiles = await request_json(address, "/v1/profiles")
    for kind in ("partner", "aad"):
        row = profiles["profiles"]["default"][kind]
        assert type(row["expires_in"]) is int and type(row["next_attempt_in"]) is int, row
        assert row["expires_at"] == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["expires_on"])
        )
    refreshed_line = next(
        json.loads(line) for line in logs.getvalue().splitlines() if '"token_refreshed"' in line
    )
    assert refreshed_line["expires_at"].endswith("Z") and "T" in refreshed_line["expires_at"]


# -- two profiles, one client_id ---------------------------------------------------------------


async def test_a_client_id_naming_several_profiles_is_a_400_naming_the_choice(
    sandbox, secret, run_server, tmp_path, witness
):
    second = 'object_id = "aaaaaaaa-0000-4000-8000-00000000000a"'
    profiles = f"[profiles.default]\n[profiles.second]\n{second}\n"
    text = config_text(sandbox, profiles=profiles) + (
        f'\n[msi]\nprofile = "default"\ngenerated_header_file = "{tmp_path}/h"\n'
    )
    settings = parse_settings(text, env={"TEST_CLIENT_SECRET": secret})
    assert any("share client_id" in w and "default, second" in w for w in settings.warnings)
    (address,), _ = await run_server(settings)
    header = (tmp_path / "h").read_text().strip()
    witness.secrets.add(header)
    query = {"api-version": "2019-08-01", "resource": "https://api.partnercenter.microsoft.com"}
    msi = {"X-IDENTITY-HEADER": header}
    status, body = await request_json(
        address, "/msi/token", headers=msi, params={**query, "client_id": CLIENT_ID}
    )
    assert status == 400 and body["statusCode"] == 400
    assert "default, second" in body["message"] and "object_id or mi_res_id" in body["message"]
    status, body = await request_json(
        address,
        "/msi/token",
        headers=msi,
        params={**query, "object_id": "aaaaaaaa-0000-4000-8000-00000000000a"},
    )
    assert status == 200 and body["client_id"] == CLIENT_ID
    status, _ = await request_json(address, "/msi/token", headers=msi, params=query)
    assert status == 200  # no selector: [msi] profile, as before


def test_check_config_warns_about_a_shared_client_id(sandbox, secret, tmp_path, capsys):
    path = tmp_path / "broker.toml"
    path.write_text(config_text(sandbox, profiles="[profiles.default]\n[profiles.second]\n"))
    os.environ["TEST_CLIENT_SECRET"] = secret
    try:
        assert main(["check-config", "--config", str(path)]) == 0
    finally:
        del os.environ["TEST_CLIENT_SECRET"]
    out = capsys.readouterr()
    assert "share client_id" in out.out + out.err


# -- the mirror is visible; refusals at debug ---------------------------------------------------


async def post_mirror(sock: Path, token: str, correlation_id: str) -> int:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "ms-correlationid": correlation_id,
    }
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.post(
            "http://localhost/v3/generatetoken", data=b"grant_type=jwt_token", headers=headers
        ) as r:
            await r.read()
            return r.status


async def test_mirror_deliveries_refusals_and_audit_are_logged(sandbox, daemon, tmp_path, witness):
    """A mirror token: `mirror_exchange` with status 200 and outcome ok, and an audit line.
    A bearer upstream refuses: the 401 is relayed, its `mirror_exchange` is a warning with
    status 401 and outcome refused, and no audit line. Refused requests (unknown profile,
    missing header, the relayed 401) are logged at debug with route, status and reason."""
    from broker import __version__

    sock = tmp_path / "b.sock"
    text = unix_config(sandbox, sock, server='log_level = "debug"') + (
        f'\n[msi]\nprofile = "default"\ngenerated_header_file = "{tmp_path}/identity-header"\n'
    )
    d = await daemon(text)
    # The start-up banner: version, config path, listeners, profiles, what is on, loop, proxy.
    banner = await d.wait_for("listening")
    assert banner["version"] == __version__
    assert banner["config"] == str(tmp_path / "broker.toml")
    assert banner["addresses"] == [f"unix:{sock}"] and banner["profiles"] == ["default"]
    assert (banner["mirror"], banner["audit"]) == ("on", "on")
    assert banner["msi"] == "on (profile default)" and banner["log_level"] == "debug"
    assert banner["event_loop"] in ("asyncio", "uvloop")
    assert banner["upstream_proxy"] == "none" or "PROXY" in banner["upstream_proxy"]
    witness.secrets.add((tmp_path / "identity-header").read_text().strip())
    good = sandbox.state.mint({"aud": "https://api.partnercenter.microsoft.com", "tid": "t"}, 3600)
    witness.secrets.add(good)
    ok_id, bad_id = "11111111-aaaa-4bbb-8ccc-000000000001", "11111111-aaaa-4bbb-8ccc-000000000002"
    assert await post_mirror(sock, good, ok_id) == 200
    exchange = await d.next_event("mirror_exchange")
    assert (exchange["status"], exchange["outcome"], exchange["level"]) == (200, "ok", "info")
    assert exchange["correlation_id"] == ok_id
    served = await d.next_event("token_served")
    assert served["route"] == "mirror" and served["cache"] == "miss"
    assert served["correlation_id"] == ok_id and served["kind"] == "partner"

    assert await post_mirror(sock, "not-a-token-" + "x" * 20, bad_id) == 401
    exchange = await d.next_event("mirror_exchange")
    assert (exchange["status"], exchange["outcome"]) == (401, "refused")
    assert exchange["level"] == "warning" and exchange["correlation_id"] == bad_id
    refused = await d.next_event("request_refused")
    assert (refused["route"], refused["status"]) == ("mirror", 401)

    assert (await fetch(sock, "/v1/token/nope"))[0] == 404
    refused = await d.next_event("request_refused")
    assert (refused["route"], refused["status"], refused["reason"]) == (
        "token",
        404,
        "unknown_profile",
    )
    assert refused["path"] == "/v1/token/nope"
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.get("http://localhost/v1/token") as r:  # no Metadata header
            assert r.status == 400
    refused = await d.next_event("request_refused")
    assert refused["status"] == 400 and refused["reason"]
    assert await d.stop() == 0
    assert sum(e.get("event") == "token_served" for e in d.events) == 1


async def test_refusals_are_not_logged_at_info(sandbox, secret, run_server):
    (address,), logs = await run_server(
        parse_settings(config_text(sandbox), env={"TEST_CLIENT_SECRET": secret})
    )
    assert (await request_json(address, "/v1/token/nope"))[0] == 404
    assert "request_refused" not in logs.getvalue()


async def test_console_audit_lines_are_console_and_in_order(sandbox, daemon, tmp_path):
    """log_format = "console": the audit line is a console line like the others (not JSON),
    written before anything logged after it (a reload right after the token)."""
    sock = tmp_path / "b.sock"
    d = await daemon(unix_config(sandbox, sock, server='log_format = "console"'))
    assert d.proc.stderr is not None
    lines: list[str] = []

    async def read_until(word: str) -> None:
        while not any(word in line for line in lines):
            line = await asyncio.wait_for(d.proc.stderr.readline(), 20)
            assert line, lines
            lines.append(line.decode())

    await read_until("listening")
    assert (await fetch(sock, "/v1/token"))[0] == 200
    d.proc.send_signal(signal.SIGHUP)
    await read_until("reloaded")
    assert await d.stop() == 0
    served = [i for i, line in enumerate(lines) if "token_served" in line]
    reloaded = next(i for i, line in enumerate(lines) if "reloaded" in line)
    assert served and served[0] < reloaded, lines
    line = lines[served[0]]
    assert not line.lstrip().startswith("{") and "route=v1" in line and "cache=" in line
    assert "profile=default" in line and "[info" in line


def test_python_warnings_reach_the_log_as_json_lines(capsys) -> None:
    """A library's `warnings.warn` (redis-py printed two raw lines to stderr for every broker
    with [shared]) goes through the broker's logger: one JSON line, nothing raw on stderr."""
    import io
    import logging
    import warnings

    from broker.observe.logs import bridge_stdlib, make_logger
    from broker.observe.redact import Redactor

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, warnings.showwarning)
    try:
        with warnings.catch_warnings():  # pytest's own recording of warnings set aside
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # as at a process's start, whatever ran before
            bridge_stdlib(make_logger(fmt="json", level="info", redactor=Redactor(), stream=stream))
            warnings.warn("a library has something to say", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        warnings.showwarning = saved[2]
    lines = stream.getvalue().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    assert "UserWarning: a library has something to say" in record["event"]
    assert capsys.readouterr().err == ""
