"""[shared]: brokers of a fleet share one cache in a real Redis (started by the fixtures in
conftest.py; no mock of Redis). Several brokers run in this process, each with its own app,
session and Redis connection; tests/test_shared_fleet.py runs them as separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from broker.core.cache.shared import SharedCache
from tests.conftest import CLIENT_ID, HEADERS, TENANT, FakeClock, config_text
from tests.redisd import HOSTILE_REPLIES, HostileRedis


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
    policy = b.broker.entry("default", "partner").policy
    flipped = bytearray(c.get(partner))
    flipped[-1] ^= 1
    c.set(partner, bytes(flipped))
    assert await b.broker.shared.store.read(partner, policy) is None
    assert await b.broker.shared.store.read(partner, policy) is None
    assert b.logs.getvalue().count("shared_entry_undecryptable") == 1


def _keys(settings):
    from broker.core.cache.sources import shared_keys

    keys = shared_keys(settings.profiles["default"])
    assert keys is not None
    return keys


# -- Redis trouble never becomes a caller's error ---------------------------------------------


async def _shared_state(b) -> dict:
    return (await (await b.get("/v1/profiles")).json())["shared"]


async def _until(condition, timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition about another process (Redis coming back) with a deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def test_redis_killed_under_load_fails_no_caller_and_is_used_again(
    sandbox, secret, start_broker, own_redis, shared_key
) -> None:
    """Two brokers under a steady crowd; Redis is killed, tokens are force-refreshed upstream
    meanwhile (the brokers fetch alone), Redis comes back: 0 caller errors throughout, state
    degraded then connected again within seconds, and Redis is written and read again."""
    settings = parse_settings(
        config_text(sandbox, server="refresh_min_interval = 0")
        + shared_text(own_redis.url, shared_key, "timeout = 0.2"),
        env={"TEST_CLIENT_SECRET": secret},
    )
    a, b = await fleet(start_broker, settings, 2)
    assert (await a.get("/v1/token")).status == 200
    assert (await b.get("/v1/token")).status == 200
    statuses: list[int] = []
    stop = asyncio.Event()

    async def caller(broker) -> None:
        while not stop.is_set():
            r = await broker.get("/v1/token")
            await r.read()
            statuses.append(r.status)

    load = [asyncio.create_task(caller(x)) for x in (a, b) for _ in range(20)]
    try:
        own_redis.kill()
        for broker in (a, b):  # fetches during the outage go upstream alone
            forced = await broker.client.post("/v1/token/default/refresh", headers=HEADERS)
            assert forced.status == 200
        states = [await _shared_state(x) for x in (a, b)]
        assert all(s["state"] == "degraded" and s["errors"] >= 1 for s in states), states
        assert all(s["last_error"] for s in states)
        assert "shared_cache_degraded" in a.logs.getvalue()
        metrics = await (await a.client.get("/metrics")).text()
        assert "broker_shared_cache_connected 0.0" in metrics
        own_redis.start()

        async def both_connected() -> bool:
            states = [(await _shared_state(x))["state"] for x in (a, b)]
            return states == ["connected", "connected"]

        await _until(both_connected, 10, "brokers reconnect to Redis")
        forced = await a.client.post("/v1/token/default/refresh", headers=HEADERS)
        assert forced.status == 200
        assert any(k.startswith(b"pc-token-broker:tok:") for k, _ in own_redis.dump())
        before = dict(sandbox.state.counts)
        hits = (await _shared_state(b))["hits"]
        forced = await b.client.post("/v1/token/default/refresh", headers=HEADERS)
        assert forced.status == 200
        assert (await _shared_state(b))["hits"] > hits  # b took a's token from Redis
        assert sandbox.state.counts == before
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert len(statuses) > 40 and set(statuses) == {200}


@pytest.mark.parametrize("after_pong", [False, True], ids=["from-the-start", "mid-fetch"])
@pytest.mark.parametrize("reply", list(HOSTILE_REPLIES), ids=list(HOSTILE_REPLIES))
async def test_a_hostile_or_silent_redis_never_fails_a_caller(
    sandbox, secret, start_broker, shared_key, reply, after_pong
) -> None:
    """Whatever a broken Redis answers, from its first PING or only once the broker is
    connected: the broker starts, counts it as a Redis failure (degraded), and the caller gets
    its token from upstream within upstream_timeout. Whatever exception the client library
    raises (RecursionError and ValueError included) is a Redis failure, never the caller's."""
    async with HostileRedis(HOSTILE_REPLIES[reply], after_pong=after_pong) as redis:
        settings = settings_with(
            sandbox,
            secret,
            redis.url,
            shared_key,
            extra="timeout = 0.2",
            defaults="warm = false\nupstream_timeout = 3",
        )
        (b,) = await fleet(start_broker, settings, 1)
        assert (await _shared_state(b))["state"] == ("connected" if after_pong else "degraded")
        started = time.monotonic()
        r = await b.get("/v1/token")
        assert r.status == 200
        assert time.monotonic() - started < 3
        state = await _shared_state(b)
        if after_pong and reply in WELL_FORMED:
            assert state["state"] == "connected", state  # no token there: fetched and served
        else:
            assert state["state"] == "degraded" and state["errors"] >= 1, state
        assert sandbox.state.counts == {"aad": 1, "partner": 1}


# Well-formed but useless answers to the data commands, once PING got its PONG: they hold no
# token and no lease, so the broker fetches on its own and has no Redis error to count.
WELL_FORMED = {"nil", "ok-to-everything"}


@pytest.mark.parametrize("reply", list(HOSTILE_REPLIES), ids=list(HOSTILE_REPLIES))
async def test_check_config_online_says_one_line_for_a_hostile_redis(
    shared_key, tmp_path, reply
) -> None:
    """`check-config --online` against a Redis that answers nonsense: one line on stderr naming
    shared.redis_url, exit 1, never a traceback (a real process, so nothing is caught for it)."""
    async with HostileRedis(HOSTILE_REPLIES[reply]) as redis:
        config = tmp_path / "config.toml"
        config.write_text(
            "[profiles.a]\ntenant_id = 't'\nclient_id = 'c'\nclient_secret_env = 'S'\n"
            + shared_text(redis.url, shared_key, "timeout = 0.2")
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "broker", "check-config", "--config", str(config), "--online"],
            env={**os.environ, "S": "x"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    prefix = f"pc-token-broker: {config}: shared.redis_url: Redis did not answer PING: "
    assert line.startswith(prefix), line
    assert "Traceback" not in done.stdout + done.stderr


async def test_redis_down_at_start_up_degrades_and_serves(
    sandbox, secret, start_broker, shared_key, tmp_path
) -> None:
    settings = settings_with(sandbox, secret, f"unix://{tmp_path}/absent.sock", shared_key)
    (b,) = await fleet(start_broker, settings, 1)
    assert (await b.get("/v1/token")).status == 200
    assert (await _shared_state(b))["state"] == "degraded"
    status = await (await b.get("/readyz")).json()
    assert status["ready"] is True


# -- the lease ------------------------------------------------------------------------------


async def test_the_lease_is_renewed_while_a_slow_fetch_runs(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    """lock_timeout = 1 s, a Partner Center answering in 1.6 s: the holder renews its lease, so
    the second broker keeps waiting instead of fetching too."""
    settings = settings_with(
        sandbox, secret, redis_db.url, shared_key, extra="lock_timeout = 1", defaults="warm = false"
    )
    a, b = await fleet(start_broker, settings, 2)
    sandbox.state.latency = {"aad": 0.0, "partner": 1.6}
    lease = a.broker.shared.name(*_keys(settings)["partner"]) + ":lease"
    first = asyncio.create_task(a.get("/v1/token"))
    client = redis_db.client()

    async def leased() -> bool:
        return bool(client.exists(lease))

    await _until(leased, 5, "a takes the lease")
    second = await b.get("/v1/token")
    assert second.status == 200 and (await first).status == 200
    assert sandbox.state.counts == {"aad": 1, "partner": 1}
    assert not client.exists(lease)  # released by compare-and-delete


async def test_a_waiter_fetches_alone_after_upstream_timeout_on_the_injected_clock(
    fake_sandbox, secret, start_broker, redis_db, shared_key, clock: FakeClock
) -> None:
    """Another broker holds the lease and never writes: after a third of upstream_timeout (on
    the fake clock) this broker fetches on its own, and leaves the other's lease alone."""
    settings = settings_with(
        fake_sandbox, secret, redis_db.url, shared_key, defaults="warm = false"
    )
    (b,) = await fleet(start_broker, settings, 1, clock=clock)
    lease = b.broker.shared.name(*_keys(settings)["partner"]) + ":lease"
    client = redis_db.client()
    client.set(lease, "another-broker", px=60_000)
    answer = asyncio.create_task(b.get("/v1/token"))

    async def waiting() -> bool:
        return b.broker.shared.status().lease_waits == 1

    await _until(waiting, 5, "the broker waits on the lease")
    assert not answer.done() and fake_sandbox.state.counts.get("partner", 0) == 0
    clock.advance(3.3)
    await asyncio.sleep(0.3)  # several polls: still waiting before a third of upstream_timeout
    assert not answer.done()
    clock.advance(0.1)  # a third of upstream_timeout: the caller still gets a token in time
    r = await answer
    assert r.status == 200
    assert fake_sandbox.state.counts["partner"] == 1
    assert client.get(lease) == b"another-broker"
    assert "shared_lease_wait_timeout" in b.logs.getvalue()


# -- rotated refresh tokens ------------------------------------------------------------------


async def test_a_rotated_refresh_token_is_shared_and_newest_wins(
    sandbox, secret, start_broker, redis_db, shared_key, tmp_path
) -> None:
    """Strict rotation: broker A redeems the refresh token both hosts were given; broker B, whose
    file still holds the spent one, redeems the newest from Redis instead. An older version
    never overwrites a newer one."""
    sandbox.state.revoke_rotated = True
    app = sandbox.state.register(
        TENANT, "22222222-0000-4000-8000-000000000002", client_secret=secret
    )
    first = sandbox.state.issue_refresh_token(app)
    files = [tmp_path / "a-rt", tmp_path / "b-rt"]
    brokers = []
    for path in files:
        path.write_text(first + "\n")
        profile = (
            f'[profiles.default]\ncredential = "refresh_token"\nclient_id = "{app.client_id}"\n'
            f'refresh_token_file = "{path}"\nwarm = false\n'
        )
        settings = settings_with(sandbox, secret, redis_db.url, shared_key, profiles=profile)
        brokers.append(await start_broker(settings))
    a, b = brokers
    assert (await a.get("/v1/token?kind=aad")).status == 200
    second = files[0].read_text().strip()
    assert second != first and first not in app.refresh_tokens
    shared = a.broker.shared
    name = shared.name(app.client_id, TENANT, "refresh_token " + settings.profiles["default"].scope)
    assert (await shared.get_versioned(name)) == (1, second)
    client = redis_db.client()
    for key in list(client.scan_iter()):  # drop the shared access tokens, keep the refresh token
        if client.type(key) == b"string":
            client.delete(key)
    r = await b.get("/v1/token?kind=aad")
    assert r.status == 200, await r.text()
    third = files[1].read_text().strip()
    assert third not in (first, second) and third in app.refresh_tokens
    assert (await shared.get_versioned(name)) == (2, third)
    assert await shared.put_versioned(name, 1, "an-older-refresh-token", 60) is False
    assert await shared.put_versioned(name, 2, "the-same-version", 60) is False
    assert (await shared.get_versioned(name)) == (2, third)
    blob = b"".join(v for _, v in redis_db.dump())
    assert third.encode() not in blob and second.encode() not in blob


# -- units --------------------------------------------------------------------------------------


def test_keys_and_values_depend_on_the_key_and_never_show_ids(shared_key, tmp_path) -> None:
    from broker.config.secret import Secret
    from broker.config.settings import SharedSettings
    from broker.observe.logs import make_logger
    from broker.observe.metrics import Metrics

    def cache(key: bytes) -> SharedCache:
        s = SharedSettings(redis_url="redis://x:1/0", key=Secret(key.hex()))
        return SharedCache(s, clock=FakeClock(), log=make_logger(), metrics=Metrics())

    one, two = cache(b"\x01" * 32), cache(b"\x02" * 32)
    name = one.name(CLIENT_ID, TENANT, "scope")
    assert name.startswith("pc-token-broker:tok:") and TENANT not in name and CLIENT_ID not in name
    assert name == one.name(CLIENT_ID, TENANT.upper(), "scope")
    assert name != two.name(CLIENT_ID, TENANT, "scope")
    assert name != one.name(CLIENT_ID, TENANT, "scope2")
    sealed = one.seal(name, b"plain")
    assert b"plain" not in sealed and one.open(name, sealed) == b"plain"
    assert one.seal(name, b"plain") != sealed  # a fresh nonce each time
    assert one.open(name + "x", sealed) is None  # the key is the associated data
    assert two.open(name, sealed) is None
    for junk in (b"", b"\x01", b"\x02" + sealed[1:], sealed[:-1]):
        assert one.open(name, junk) is None
    nan = json.dumps({"v": "t", "t": "Bearer", "e": "NaN", "l": 10}).encode()
    assert one.store.token(nan) is None
    for bad in (b"[]", b"{", b'{"v": 1}', b'{"v": "t", "t": "B", "e": 1e300, "l": 1e300}'):
        assert one.store.token(bad) is None


def test_no_shared_section_means_the_identity_wrapper() -> None:
    from broker.observe.logs import make_logger
    from broker.observe.metrics import Metrics

    cache = SharedCache(None, clock=FakeClock(), log=make_logger(), metrics=Metrics())

    async def fetch(_ids):
        raise AssertionError

    assert cache.wrap(fetch, ("c", "t", "s"), None) is fetch  # type: ignore[arg-type]
    assert not cache.enabled and cache.status().state == "off"


async def test_only_the_leases_holder_can_extend_or_release_it(
    sandbox, secret, start_broker, redis_db, shared_key
) -> None:
    """Compare-and-delete and compare-and-extend: a holder whose lease lapsed and was taken by
    another broker can neither delete nor extend the other's; the holder can do both (its
    extension resets the expiry to lock_timeout)."""
    settings = settings_with(
        sandbox,
        secret,
        redis_db.url,
        shared_key,
        extra="lock_timeout = 120",
        defaults="warm = false",
    )
    (b,) = await fleet(start_broker, settings, 1)
    shared = b.broker.shared
    name = shared.name("c", "t", "s")
    lease = name + ":lease"
    client = redis_db.client()
    mine, theirs = shared.lease(name), shared.lease(name)
    assert await mine.take() is True
    assert await theirs.take() is False  # held: SET NX refuses
    client.delete(lease)  # ours lapsed ...
    assert await theirs.take() is True  # ... and another broker took it
    held = client.get(lease)
    client.pexpire(lease, 60_000)
    assert await mine.release() is False
    assert await mine.renew() is False
    assert client.get(lease) == held and client.pttl(lease) <= 60_000
    assert await theirs.renew() is True
    assert client.pttl(lease) > 60_000
    assert await theirs.release() is True
    assert not client.exists(lease)
    assert shared.state == "connected"  # "not ours" is an answer, not a Redis failure


def test_status_line_shows_the_shared_cache_state() -> None:
    from broker.cli.summary import shared_line

    line = shared_line(
        {
            "state": "degraded",
            "redis": "unix:///run/redis.sock",
            "last_error": "ConnectionError: refused",
            "hits": 3,
            "misses": 1,
            "lease_waits": 2,
            "errors": 5,
        }
    )
    assert line.startswith("shared cache: degraded (unix:///run/redis.sock)")
    assert "hits 3" in line and "lease waits 2" in line and "Redis errors 5" in line
    assert line.endswith("last error: ConnectionError: refused")
