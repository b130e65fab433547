"""Configuration: every problem named by key path and line; secrets from files and env only;
no plain http to an upstream off loopback unless the profile allows it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from broker.cli.main import main
from broker.config.listen import Listen
from broker.config.load import ConfigError, load_settings, parse_settings
from tests.support import ROOT, serve_process

VALID = """
[server]
listen = ["127.0.0.1:8721", "[::1]:8722", "unix:/run/pcb/broker.sock"]

[defaults]
tenant_id = "t.onmicrosoft.com"
client_id = "c"
client_secret_env = "SECRET"

[profiles.default]
[profiles.other]
warm = false
min_remaining = 60
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, file="broker.toml", env={"SECRET": "x" * 20, **(env or {})})
    return [str(p) for p in info.value.problems]


def test_a_valid_config_becomes_typed_frozen_settings() -> None:
    """Defaults are inherited, overrides apply, listeners are parsed, settings are immutable."""
    s = parse_settings(VALID, env={"SECRET": "x" * 20})
    assert s.server.listen == (
        Listen.tcp("127.0.0.1", 8721),
        Listen.tcp("::1", 8722),
        Listen.unix("/run/pcb/broker.sock"),
    )
    assert s.profiles["default"].warm is True and s.profiles["other"].warm is False
    assert s.profiles["other"].min_remaining == 60 and s.profiles["default"].min_remaining == 30
    assert s.profiles["default"].token_url == (
        "https://login.microsoftonline.com/t.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert s.profiles["default"].client_secret.reveal() == "x" * 20
    with pytest.raises(AttributeError):
        s.profiles["default"].warm = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "unknown top-level key",
            VALID + "\n[surprise]\n",
            "broker.toml:15: surprise: unknown key",
        ),
        (
            "unknown profile key",
            VALID + "colour = 'blue'\n",
            "broker.toml:14: profiles.other.colour: unknown key",
        ),
        (
            "wrong type",
            VALID.replace("min_remaining = 60", "min_remaining = 'sixty'"),
            "broker.toml:13: profiles.other.min_remaining: must be a number",
        ),
        (
            "out of range",
            VALID.replace("min_remaining = 60", "min_remaining = -1"),
            "broker.toml:13: profiles.other.min_remaining: must be between 0 and 3600",
        ),
        (
            "bad listen",
            VALID.replace("[::1]:8722", "nowhere"),
            "broker.toml:3: server.listen: entry 2 ('nowhere')",
        ),
        (
            "relative unix socket",
            VALID.replace("unix:/run", "unix:run"),
            "entry 3 ('unix:run/pcb/broker.sock'): a unix socket path must be absolute",
        ),
        (
            "missing client id",
            VALID.replace('client_id = "c"\n', ""),
            "broker.toml:9: profiles.default.client_id: required",
        ),
        (
            "bad credential",
            VALID.replace("warm = false", "credential = 'magic'"),
            "broker.toml:12: profiles.other.credential: must be one of",
        ),
        (
            "bad header",
            VALID.replace("[server]", "[server]\nrequired_header = 'Metadata'"),
            "server.required_header: must look like 'Name: value'",
        ),
        (
            "bad url",
            VALID.replace("[defaults]", "[defaults]\nauthority = 'ftp://x'"),
            "defaults.authority: must be an http(s) URL",
        ),
        (
            "bad profile name",
            VALID.replace("[profiles.other]", "[profiles.'a b']"),
            "profiles.a b: profile names are",
        ),
        (
            "two secret sources",
            VALID.replace(
                'client_secret_env = "SECRET"', 'client_secret_env = "SECRET"\nclient_secret = "y"'
            ),
            "client_secret_env: give only one of",
        ),
        (
            "env var not set",
            VALID.replace('"SECRET"', '"NOT_SET_ANYWHERE"'),
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            "missing secret file",
            VALID.replace(
                'client_secret_env = "SECRET"', 'client_secret_file = "/nonexistent/secret"'
            ),
            "client_secret_file: cannot read /nonexistent/secret",
        ),
        (
            "unset variable in path",
            VALID.replace(
                'client_secret_env = "SECRET"', 'client_secret_file = "${NO_SUCH_DIR}/s"'
            ),
            "environment variable NO_SUCH_DIR is not set",
        ),
        ("syntax error", "[server\nlisten = 1", "broker.toml:1: (syntax)"),
        (
            "max entries not whole",
            VALID + "[mirror]\nmax_entries = 1.5\n",
            "mirror.max_entries: must be a whole number",
        ),
    ],
)
def test_each_broken_config_names_its_key(name: str, text: str, expected: str) -> None:
    """Every broken config is refused with the key path (and line where known)."""
    found = problems(text)
    assert any(expected in p for p in found), (name, found)


def test_every_problem_is_reported_at_once() -> None:
    """Three independent mistakes give three problems, not just the first."""
    text = VALID.replace("min_remaining = 60", "min_remaining = 'x'").replace(
        "[server]", "[server]\nlog_level = 'loud'\nport = 1"
    )
    found = problems(text)
    assert len(found) == 3
    assert {p.split(": ")[1] for p in found} == {
        "profiles.other.min_remaining",
        "server.log_level",
        "server.port",
    }


def test_secret_file_with_variable_expansion(tmp_path: Path) -> None:
    """client_secret_file expands ${VAR} (systemd's $CREDENTIALS_DIRECTORY) and is stripped."""
    (tmp_path / "client-secret").write_text("  the-file-secret-value\n")
    text = VALID.replace(
        'client_secret_env = "SECRET"',
        'client_secret_file = "${CREDENTIALS_DIRECTORY}/client-secret"',
    )
    s = parse_settings(text, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert s.profiles["default"].client_secret.reveal() == "the-file-secret-value"
    assert s.profiles["default"].secret_source == f"file {tmp_path}/client-secret"
    assert "the-file-secret-value" not in repr(s)


def test_relative_secret_file_is_relative_to_the_config(tmp_path: Path) -> None:
    """A relative *_file path is read next to the config file, not the working directory."""
    (tmp_path / "secret.txt").write_text("relative-secret-value")
    config = tmp_path / "broker.toml"
    config.write_text(
        VALID.replace('client_secret_env = "SECRET"', 'client_secret_file = "secret.txt"')
    )
    s = load_settings(str(config), env={})
    assert s.profiles["default"].client_secret.reveal() == "relative-secret-value"


def test_example_config_documents_every_key_and_parses(tmp_path: Path) -> None:
    """config.example.toml is valid (given its secrets) and mentions every accepted key."""
    from broker.config.load import PROFILE_KEYS
    from broker.config.sections import MIRROR_KEYS, MSI_KEYS, SERVER_KEYS

    text = (ROOT / "config.example.toml").read_text()
    (tmp_path / "client-secret").write_text("example-secret-value")
    from tests.support import make_certificate

    (tmp_path / "app.pem").write_bytes(make_certificate(password=b"example-pw")[0])
    text = text.replace("/var/lib/pc-token-broker", str(tmp_path))
    (tmp_path / "delegated.refresh-token").write_text("0.A-example")
    s = parse_settings(
        text,
        env={
            "CREDENTIALS_DIRECTORY": str(tmp_path),
            "BILLING_CLIENT_SECRET": "billing-secret-value",
            "APP_PEM_PASSWORD": "example-pw",
            "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "federated"),
        },
    )
    assert set(s.profiles) == {"default", "billing", "cert-app", "delegated", "workload", "placed"}
    for key in PROFILE_KEYS | SERVER_KEYS | MIRROR_KEYS | MSI_KEYS:
        assert key in text, key


def test_check_config_exits_2_with_problems(tmp_path: Path, capsys, monkeypatch) -> None:
    """check-config prints every problem with file, line and key path, and exits 2."""
    monkeypatch.setenv("SECRET", "x" * 20)
    config = tmp_path / "broker.toml"
    config.write_text(VALID.replace("min_remaining = 60", "min_remaining = true"))
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:13: profiles.other.min_remaining: must be a number" in err
    assert "Traceback" not in err


def test_check_config_summary_never_prints_the_secret(tmp_path: Path, capsys, monkeypatch) -> None:
    """A valid config gives a summary (exit 0) naming where the secret is, never its value."""
    monkeypatch.setenv("SECRET", "summary-secret-value-123")
    config = tmp_path / "broker.toml"
    config.write_text(VALID.replace("/run/pcb", str(tmp_path)))  # the socket's folder exists
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "env SECRET" in out and "default" in out and "other" in out
    assert "summary-secret-value-123" not in out


def test_inline_secret_in_a_readable_file_is_warned_about(tmp_path: Path, capsys) -> None:
    """An inline client_secret in a file others can read gets a check-config warning."""
    config = tmp_path / "broker.toml"
    config.write_text(
        VALID.replace(
            'client_secret_env = "SECRET"', 'client_secret = "inline-secret-value"'
        ).replace("/run/pcb", str(tmp_path))  # the socket's folder exists
    )
    os.chmod(config, 0o644)
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "which others can read" in out
    assert "inline-secret-value" not in out
    os.chmod(config, 0o600)
    assert main(["check-config", "--config", str(config)]) == 0
    assert "which others can read" not in capsys.readouterr().out


def test_missing_config_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    """A config path that does not exist: one line naming it, exit 2."""
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_config_path_comes_from_the_environment(tmp_path: Path, capsys, monkeypatch) -> None:
    """Without --config, $PC_TOKEN_BROKER_CONFIG is used."""
    config = tmp_path / "env.toml"
    config.write_text(VALID.replace("/run/pcb", str(tmp_path)))  # the socket's folder exists
    monkeypatch.setenv("PC_TOKEN_BROKER_CONFIG", str(config))
    monkeypatch.setenv("SECRET", "x" * 20)
    assert main(["check-config"]) == 0
    assert str(config) in capsys.readouterr().out


async def test_serve_refuses_plain_http_upstreams(tmp_path, secret):
    """`serve` with a non-loopback http:// upstream exits 2 naming the key; a lookalike of
    loopback is not loopback; allow_insecure_upstream = true lets it through, with a warning."""
    config = tmp_path / "broker.toml"
    config.write_text("""[server]
listen = ["127.0.0.1:0"]
[defaults]
generatetoken_url = "http://pc.example.com/v3/generatetoken"
[profiles.default]
tenant_id = "t"
client_id = "c"
client_secret_env = "S"
authority = "http://127.0.0.1.evil.example"
[mirror]
upstream_base = "http://localhost.evil.example"
""")
    proc = await serve_process(
        config,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "S": secret},
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2
    for key in ("defaults.generatetoken_url", "profiles.default.authority", "mirror.upstream_base"):
        assert f"{key}: plain http to a non-loopback host".encode() in err, key
    assert b"Traceback" not in err

    allowed = (
        config.read_text().replace(
            "[profiles.default]\n", "allow_insecure_upstream = true\n[profiles.default]\n", 1
        )
        + "allow_insecure_upstream = true\n"
    )
    settings = parse_settings(allowed, env={"S": secret})
    assert settings.profiles["default"].allow_insecure_upstream
    assert sum("plain http" in w for w in settings.warnings) == 3
    loopback = allowed.replace("http://pc.example.com", "http://[::1]:9").replace(
        "allow_insecure_upstream = true\n", ""
    )
    loopback = loopback.replace("127.0.0.1.evil.example", "127.0.0.2:8").replace(
        "localhost.evil.example", "localhost:9"
    )
    assert parse_settings(loopback, env={"S": secret}).warnings == ()
