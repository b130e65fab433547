"""The config schema is the one definition of every key: config.example.toml documents exactly
its keys, the settings' defaults are its defaults, the reference and the restart-only list come
from it, and the command line reads [server] through it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from broker.cli.client import DEFAULT_HEADER, DEFAULT_URL, TargetError, target_from
from broker.config.load import ConfigError, parse_settings
from broker.config.profile_schema import ProfileKeys
from broker.config.reference import RESTART_NAMES, keys, restart_needed
from broker.config.schema import SECTIONS, ConfigFile, ServerSection
from broker.config.settings import MirrorSettings, MsiSettings, ServerSettings
from broker.config.tomlpos import key_lines
from tests.support import ROOT

EXAMPLE = (ROOT / "config.example.toml").read_text()
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _model(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The schema model of the table at `path` ("profiles", NAME counts as one table)."""
    if path == ("defaults",) or (len(path) == 2 and path[0] == "profiles"):
        return ProfileKeys
    return SECTIONS.get(path[0]) if len(path) == 1 else None


def _uncommented(text: str) -> str:
    """The example with one level of comment taken off its key and table lines, so that keys
    shown commented out count as written."""
    out = []
    for line in text.splitlines():
        rest = line.lstrip()[1:].strip() if line.lstrip().startswith("#") else None
        if rest is not None and (_KEY_LINE.match(rest) or re.match(r"\[[\w.\"' -]+\]$", rest)):
            line = rest
        out.append(line)
    return "\n".join(out)


def _blocks() -> list[tuple[tuple[str, ...], list[str], str]]:
    """Each table of the example (commented out or not): its path, its key lines' keys, and
    all of its text (prose included)."""
    blocks: list[tuple[tuple[str, ...], list[str], str]] = []
    table: tuple[str, ...] = ()
    lines = key_lines(_uncommented(EXAMPLE))
    headers = {number: path for path, number in lines.items() if _model(path) is not None}
    text: list[str] = []
    found: list[str] = []
    for number, line in enumerate(_uncommented(EXAMPLE).splitlines(), start=1):
        if number in headers:
            blocks.append((table, found, "\n".join(text)))
            table, found, text = headers[number], [], []
            continue
        text.append(line)
        m = _KEY_LINE.match(line)
        if m and not line.lstrip().startswith("#") and (*table, m.group(1)) in lines:
            found.append(m.group(1))
    blocks.append((table, found, "\n".join(text)))
    return blocks[1:]  # before the first table: the file's heading


def test_every_key_in_the_example_is_in_the_schema() -> None:
    for table, found, _ in _blocks():
        model = _model(table)
        assert model is not None, f"[{'.'.join(table)}] is not a table of the schema"
        for key in found:
            assert key in model.model_fields, f"{'.'.join(table)}.{key} is not in the schema"


def test_every_key_of_the_schema_is_in_the_example() -> None:
    """Written as a key (commented out or not), or named in its table's comments."""
    blocks = _blocks()
    for name, model in [("profiles", ProfileKeys), *SECTIONS.items()]:
        mine = [
            b for b in blocks if b[0][0] == name or (name == "profiles" and b[0][0] == "defaults")
        ]
        assert mine, f"no [{name}] table in the example"
        for key in model.model_fields:
            assert any(key in found or re.search(rf"\b{key}\b", text) for _, found, text in mine), (
                f"{name}.{key} is not in config.example.toml"
            )


def test_the_example_parses_and_its_values_fit_the_schema() -> None:
    s = parse_settings(EXAMPLE, mode="offline")
    assert set(s.profiles) == {"default", "billing", "cert-app", "delegated", "workload", "placed"}
    # The values shown commented out are valid too (those on one line).
    for table, _, text in _blocks():
        model = _model(table)
        assert model is not None
        for line in text.splitlines():
            m = _KEY_LINE.match(line)
            if not m or line.lstrip().startswith("#"):
                continue
            try:
                value = tomllib.loads(line)
            except tomllib.TOMLDecodeError:
                continue  # a list over several lines
            try:
                model.model_validate(value)
            except ValidationError as e:
                assert all(x["type"] == "missing" for x in e.errors()), (table, line, e)


def test_the_example_shows_the_defaults_where_it_says_so() -> None:
    """[server], [defaults] and [mirror] list every key with its default."""
    data = tomllib.loads(EXAMPLE)
    for table, model in (("server", ServerSection), ("defaults", ProfileKeys)):
        defaults = model()
        for key, value in data[table].items():
            if key in ("tenant_id", "client_id", "client_secret_file"):
                continue
            expected = getattr(defaults, key)
            assert value == (list(expected) if isinstance(expected, tuple) else expected), key
    mirror = SECTIONS["mirror"]()
    for key, value in data["mirror"].items():
        assert value == getattr(mirror, key), key


def test_the_reference_lists_every_key_once_with_its_meaning() -> None:
    ref = keys()
    paths = [k.path for k in ref]
    assert len(paths) == len(set(paths))
    expected = {f"profiles.<name>.{k}" for k in ProfileKeys.model_fields} | {
        f"{t}.{k}" for t, m in SECTIONS.items() for k in m.model_fields
    }
    assert set(paths) == expected
    for k in ref:
        assert k.meaning and "\n" not in k.meaning, k.path
        assert k.reload in ("live", "restart") and k.type, k.path
    by_path = {k.path: k for k in ref}
    assert by_path["server.listen"].default == ["127.0.0.1:8721"]
    assert by_path["server.max_connections"].minimum == 1
    assert by_path["shared.redis_url"].required and by_path["shared.redis_url"].default is None
    assert by_path["profiles.<name>.certificate_file"].credentials == ("certificate",)
    assert by_path["server.log_format"].type == "one of: json, console"
    assert "shared" in ConfigFile.model_json_schema()["properties"]


def test_restart_only_settings_are_declared_once() -> None:
    # What broker/core/service.py lists as RESTART_KEYS, plus the parser limits and
    # shutdown_timeout (set when the server starts), plus [shared].
    assert set(RESTART_NAMES) == {
        "listen",
        "log_format",
        "log_level",
        "socket_mode",
        "socket_group",
        "allow_remote",
        "event_loop",
        "upstream_proxy",
        "upstream_proxy_credentials",
        "shutdown_timeout",
        "shared",
    }
    assert {k.path for k in keys() if k.reload == "restart"} == {
        *(
            f"server.{n}"
            for n in RESTART_NAMES
            if n not in ("shared", "upstream_proxy_credentials")
        ),
        "server.upstream_proxy_credentials_file",
        *(f"shared.{k}" for k in SECTIONS["shared"].model_fields),
    }


BASE = """
[server]
[profiles.a]
tenant_id = "t"
client_id = "c"
client_secret_env = "S"
"""


def _settings(text: str, tmp_path: Path | None = None):
    return parse_settings(text, env={"S": "secret-value-1"}, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('listen = ["127.0.0.1:8722"]', ["listen"]),
        ('log_level = "debug"', ["log_level"]),
        ("read_timeout = 5", []),  # live: the connection gate reads it at each use
        ("max_header_bytes = 4096", []),  # live, likewise
        ("shutdown_timeout = 2", ["shutdown_timeout"]),
        ('socket_mode = "0600"', ["socket_mode"]),
        ("max_connections = 9", []),
        ('required_header = "X-Token: yes"', []),
        ("audit = false", []),
    ],
)
def test_restart_needed_names_what_only_a_restart_applies(change: str, expected: list[str]):
    old = _settings(BASE)
    new = _settings(BASE.replace("[profiles.a]", f"{change}\n[profiles.a]"))
    assert restart_needed(old, new) == expected
    assert restart_needed(old, old) == []


def test_restart_needed_for_profiles_mirror_and_shared(tmp_path: Path) -> None:
    old = _settings(BASE)
    assert restart_needed(old, _settings(BASE + "warm = false\n[mirror]\nenabled = false\n")) == []
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    shared = BASE + f'[shared]\nredis_url = "redis://h:1/0"\nkey_file = "{key}"\n'
    assert restart_needed(old, _settings(shared)) == ["shared"]
    assert restart_needed(_settings(shared), _settings(shared.replace("h:1", "h:2"))) == ["shared"]


def test_settings_stay_frozen_comparable_and_hashable() -> None:
    a, b = _settings(BASE), _settings(BASE)
    assert a.server == b.server and hash(a.server) == hash(b.server)
    assert a.profiles["a"] == b.profiles["a"] and hash(a.profiles["a"]) == hash(b.profiles["a"])
    assert a.mirror == MirrorSettings() and hash(a.mirror) == hash(MirrorSettings())
    with pytest.raises(FrozenInstanceError):
        a.server.log_level = "debug"  # type: ignore[misc]
    # The settings' own defaults are the schema's.
    empty = _settings("[profiles.a]\ntenant_id = 't'\nclient_id = 'c'\nclient_secret_env = 'S'\n")
    assert empty.server == ServerSettings() and empty.mirror == MirrorSettings()
    msi = _settings(BASE + '[msi]\nprofile = "a"\nidentity_header_env = "S"\n').msi
    assert msi is not None and msi.min_remaining == MsiSettings().min_remaining == 420


def test_no_secret_reaches_a_message() -> None:
    text = BASE.replace('client_secret_env = "S"', 'client_secret = "inline-secret-9"\nwarm = 3')
    text += '[profiles.b]\ncredential = "certificate"\nclient_secret = "inline-secret-9"\n'
    with pytest.raises(ConfigError) as info:
        _settings(text)
    assert "inline-secret-9" not in str(info.value)
    assert "profiles.b.client_secret: not used by credential 'certificate'" in str(info.value)
    with pytest.raises(ValidationError) as raw:
        ProfileKeys.model_validate({"client_secret": "inline-secret-9", "access_key": 5})
    assert "inline-secret-9" not in str(raw.value) and "inline-secret-9" not in repr(raw.value)


# -- the command line reads [server] through the schema -------------------------------------


def test_the_clients_defaults_are_the_schemas() -> None:
    server = ServerSection()
    assert server.header() == DEFAULT_HEADER
    assert f"http://{server.listeners()[0]}" == DEFAULT_URL


def test_the_client_reads_server_without_the_profiles_secrets(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[server]\nlisten = ["0.0.0.0:9001"]\nrequired_header = "X-Broker: 1"\n'
        "[profiles.a]\ntenant_id = 't'\nclient_id = 'c'\n"
        "client_secret_file = '/nonexistent/secret'\n[surprise]\n"
    )
    target = target_from(None, None, str(config), env={})
    assert (target.url, target.header) == ("http://127.0.0.1:9001", ("X-Broker", "1"))
    config.write_text('[server]\nlisten = ["[::]:9001", "unix:/run/x.sock"]\n')
    target = target_from(None, None, str(config), env={})
    assert (target.url, target.header) == ("http://[::1]:9001", ("Metadata", "true"))
    config.write_text('[server]\nlisten = ["unix:/run/x.sock"]\n')
    assert target_from(None, None, str(config), env={}).socket_path == "/run/x.sock"


def test_a_server_table_serve_would_refuse_is_refused_by_the_client(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nlisten = ["nowhere"]\nlog_level = "loud"\n')
    for explicit in (True, False):  # the default path too: it is readable, so it counts
        with pytest.raises(TargetError) as info:
            target_from("http://127.0.0.1:1", None, str(config), explicit=explicit, env={})
        text = str(info.value)
        assert f"{config}:2: server.listen: entry 1 ('nowhere'): expected HOST:PORT" in text
        assert f"{config}:3: server.log_level: must be one of debug, info" in text
    config.write_text("server = 5\n")
    with pytest.raises(TargetError, match=r"c.toml:1: server: must be a table"):
        target_from(None, None, str(config), env={})
