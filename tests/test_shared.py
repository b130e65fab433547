"""[shared]: brokers of a fleet share one cache in a real Redis (started by the fixtures in
conftest.py; no mock of Redis). Several brokers run in this process, each with its own app,
session and Redis connection; tests/test_shared_fleet.py runs them as separate processes."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from tests.conftest import CLIENT_ID, TENANT, config_text


def shared_text(url: str, key_file: str, extra: str = "") -> str:
    return f'\n[shared]\nredis_url = "{url}"\nkey_file = "{key_file}"\n{extra}\n'


def settings_with(sandbox, secret, url, key_file, *, extra="", defaults="", profiles=None):
    text = config_text(sandbox, defaults=defaults, profiles=profiles)
    return parse_settings(
        text + shared_text(url, key_file, extra), env={"TEST_CLIENT_SECRET": secret}
    )


async def fleet(start_broker, settings, n: int, **kwargs):
    return [await start_broker(settings, **kwargs) for _ in range(n)]


async def crowd(brokers, per_broker: int, path: str = "/v1/token") -> list[int]:
    async def one(b):
        r = await b.get(path)
        await r.read()
        return r.status

    return await asyncio.gather(*(one(b) for b in brokers for _ in range(per_broker)))


# -- configuration ----------------------------------------------------------------------------


def parse_shared(tmp_path: Path, body: str):
    return parse_settings(
        f"[profiles.a]\ntenant_id = 't'\nclient_id = 'c'\nclient_secret_env = 'S'\n"
        f"[shared]\n{body}\n",
        env={"S": "x"},
        file=str(tmp_path / "config.toml"),
    )


def test_shared_config_is_read(tmp_path: Path, shared_key: str) -> None:
    (tmp_path / "pw").write_text("fleet:pa:ss\n")
    s = parse_shared(
        tmp_path,
        f'redis_url = "rediss://redis.internal:6380/2"\nkey_file = "{shared_key}"\n'
        'password_file = "pw"\nprefix = "team-a"\nlock_timeout = 30\n',
    ).shared
    assert s is not None and s.redis_url == "rediss://redis.internal:6380/2"
    assert bytes.fromhex(s.key.reveal()) == Path(shared_key).read_bytes()
    assert s.username == "fleet" and s.password is not None and s.password.reveal() == "pa:ss"
    assert (s.prefix, s.lock_timeout) == ("team-a", 30.0)
    assert "pa:ss" not in repr(s)


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        ('key_file = "{key}"', "shared.redis_url", "required"),
        ('redis_url = "redis://h:1/0"', "shared.key_file", "required"),
        ('redis_url = "http://h:1/0"\nkey_file = "{key}"', "shared.redis_url", "redis://"),
        ('redis_url = "redis://u:pw@h:1/0"\nkey_file = "{key}"', "shared.redis_url", "password"),
        ('redis_url = "redis://h:1/0"\nkey_file = "{short}"', "shared.key_file", "exactly 32"),
        ('redis_url = "redis://h:1/0"\nkey_file = "{long}"', "shared.key_file", "exactly 32"),
        ('redis_url = "redis://h:1/0"\nkey_file = "{open}"', "shared.key_file", "every user"),
        ('redis_url = "redis://h:1/0"\nkey_file = "{tmp}/nope"', "shared.key_file", "cannot"),
        ('redis_url = "redis://h:1/0"\nkey_file = "{key}"\npassword = "x"', "shared.password", ""),
        ('redis_url = "redis://h:1/0"\nkey_file = "{key}"\nlock_timeout = 0', "lock_timeout", ""),
        ('redis_url = "redis://h:1/0"\nkey_file = "{key}"\nprefix = "a b"', "shared.prefix", ""),
        (
            'redis_url = "redis://h:1/0"\nkey_file = "{key}"\npassword_file = "{tmp}/none"',
            "shared.password_file",
            "cannot read",
        ),
    ],
)
def test_shared_config_problems(tmp_path, shared_key, body, where, message) -> None:
    for name, size, mode in (("short", 31, 0o600), ("long", 33, 0o600), ("open", 32, 0o644)):
        (tmp_path / name).write_bytes(os.urandom(size))
        (tmp_path / name).chmod(mode)
    text = body.format(
        key=shared_key,
        short=tmp_path / "short",
        long=tmp_path / "long",
        open=tmp_path / "open",
        tmp=tmp_path,
    )
    with pytest.raises(ConfigError) as info:
        parse_shared(tmp_path, text)
    problems = [p for p in info.value.problems if where in p.path]
    assert problems and message in problems[0].message, info.value.problems


def test_check_config_online_pings_redis(
    redis_db, shared_key, tmp_path, capsys, monkeypatch
) -> None:
    """--online: 0 when Redis answers, 1 naming shared.redis_url when it does not."""
    from broker.cli.main import main

    config = tmp_path / "config.toml"
    base = "[profiles.a]\ntenant_id = 't'\nclient_id = 'c'\nclient_secret_env = 'S'\n"
    monkeypatch.setenv("S", "x")
    config.write_text(base + shared_text(redis_db.url, shared_key))
    assert main(["check-config", "--config", str(config), "--online"]) == 0
    assert "Redis answered PING" in capsys.readouterr().out
    config.write_text(base + shared_text(f"unix://{tmp_path}/no.sock", shared_key))
    assert main(["check-config", "--config", str(config)]) == 0  # offline: not asked
    assert main(["check-config", "--config", str(config), "--online"]) == 1
    assert "shared.redis_url: Redis did not answer" in capsys.readouterr().err


# -- one upstream call for the fleet ------------------------------------------------------------


async def test_fleet_of_brokers_makes_one_upstream_call_per_token(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    """4 brokers x 200 concurrent cold callers: one Azure AD and one Partner Center call in
    total; every caller gets the same token."""
    settings = settings_with(sandbox, secret, redis_db.url, shared_key, defaults="warm = false")
    sandbox.state.latency = {"aad": 0.05, "partner": 0.05}
    brokers = await fleet(start_broker, settings, 4)
    statuses = await crowd(brokers, 200)
    assert statuses == [200] * 800
    assert sandbox.state.counts == {"aad": 1, "partner": 1}
    tokens = {(await (await b.get("/v1/token")).json())["access_token"] for b in brokers}
    assert len(tokens) == 1
    shared = [(await (await b.get("/v1/profiles")).json())["shared"] for b in brokers]
    assert all(s["state"] == "connected" and s["errors"] == 0 for s in shared)
    assert sum(s["hits"] for s in shared) >= 3  # three brokers got both tokens from Redis
    assert sum(s["lease_waits"] for s in shared) >= 1
    metrics = await (await brokers[0].client.get("/metrics")).text()
    assert "broker_shared_cache_total" in metrics and "broker_shared_cache_connected 1.0" in metrics


async def test_nothing_in_redis_is_plain_text(
    sandbox, secret, start_broker, redis_db, shared_key, witness
) -> None:
    """Every key and value in Redis, scanned: no token, secret, tenant or client id."""
    settings = settings_with(sandbox, secret, redis_db.url, shared_key)
    (b,) = await fleet(start_broker, settings, 1)
    token = (await (await b.get("/v1/token")).json())["access_token"]
    aad = (await (await b.get("/v1/token?kind=aad")).json())["access_token"]
    dump = redis_db.dump()
    assert len(dump) >= 2
    blob = b"\n".join(k + b"=" + v for k, v in dump)
    for needle in (token, aad, secret, TENANT, CLIENT_ID, *sandbox.state.issued_values):
        for form in (needle.encode(), needle.encode().hex().encode()):
            assert form not in blob
    # and pieces of the token: its JWT payload part is not there either
    assert token.split(".")[1].encode() not in blob
    for key, _ in dump:
        assert key.startswith(b"pc-token-broker:tok:")


async def test_a_restarted_broker_serves_from_redis_with_no_upstream_call(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    settings = settings_with(sandbox, secret, redis_db.url, shared_key)
    (first,) = await fleet(start_broker, settings, 1)
    token = (await (await first.get("/v1/token")).json())["access_token"]
    await first.client.close()
    before = dict(sandbox.state.counts)
    (second,) = await fleet(start_broker, settings, 1)
    answer = await second.get("/v1/token")
    assert answer.status == 200 and (await answer.json())["access_token"] == token
    assert sandbox.state.counts == before  # 0 upstream calls for the restarted broker


async def test_another_key_file_ignores_the_entries_and_fetches_its_own(
    sandbox, secret, start_broker, redis_db, shared_key, tmp_path
) -> None:
    settings = settings_with(sandbox, secret, redis_db.url, shared_key)
    (a,) = await fleet(start_broker, settings, 1)
    token_a = (await (await a.get("/v1/token")).json())["access_token"]
    other_key = tmp_path / "other.key"
    other_key.write_bytes(secrets.token_bytes(32))
    other_key.chmod(0o600)
    (b,) = await fleet(
        start_broker, settings_with(sandbox, secret, redis_db.url, str(other_key)), 1
    )
    token_b = (await (await b.get("/v1/token")).json())["access_token"]
    assert token_b != token_a
    assert sandbox.state.counts == {"aad": 2, "partner": 2}


async def test_a_tampered_or_moved_entry_is_ignored_and_logged_once(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    """A value copied under another key (the key is the associated data) or with one byte
    flipped fails to decrypt: never served, logged once, and the broker fetches its own."""
    settings = settings_with(sandbox, secret, redis_db.url, shared_key, defaults="warm = false")
    (a,) = await fleet(start_broker, settings, 1)
    token_a = (await (await a.get("/v1/token")).json())["access_token"]
    c = redis_db.client()
    keys = _keys(settings)
    partner = a.broker.shared.name(*keys["partner"])
    aad = a.broker.shared.name(*keys["aad"])
    assert c.exists(partner) and c.exists(aad)
    c.set(partner, c.get(aad))  # a valid value, moved to another key
    (b,) = await fleet(start_broker, settings, 1)
    r = await b.get("/v1/token")
    assert r.status == 200 and (await r.json())["access_token"] != token_a
    assert sandbox.state.counts == {"aad": 1, "partner": 2}  # the aad entry still shared
    policy = b.broker.cache.entry("default", "partner").policy
    flipped = bytearray(c.get(partner))
    flipped[-1] ^= 1
    c.set(partner, bytes(flipped))
    assert await b.broker.shared._read(partner, policy) is None
    assert await b.broker.shared._read(partner, policy) is None
    assert b.logs.getvalue().count("shared_entry_undecryptable") == 1


def _keys(settings):
    from broker.core.sources import shared_keys

    keys = shared_keys(settings.profiles["default"])
    assert keys is not None
    return keys
