"""[shared]: brokers of a fleet share one cache in a real Redis (started by the fixtures in
conftest.py). No mock of Redis, nor of redis-py: every byte goes through a real socket.

Two ways in. Brokers: several in this process, each with its own app, session and Redis
connection (tests/test_shared_fleet.py runs them as separate processes). And `SharedCache` on
its own, one behaviour at a time: driven directly on a fake clock against the real Redis
(`redis_db` / `own_redis`), or against a small server on loopback that forwards to it (to
watch or disturb the commands) or misbehaves on its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.config.errors import ConfigError
from broker.config.load import parse_settings
from broker.config.secret import Secret
from broker.config.settings import SharedSettings
from broker.core.cache import Policy
from broker.core.cache.shared import SharedCache, describe, ping, where
from broker.core.tokens import Token, schedule
from broker.core.upstream import RefreshIds
from broker.observe.logs import make_logger
from broker.observe.metrics import Metrics
from tests.conftest import CLIENT_ID, HEADERS, TENANT, FakeClock, config_text
from tests.redisd import HOSTILE_REPLIES, HostileRedis, LoopbackServer, resp_commands
from tests.support import ROOT, until

# -- brokers of a fleet, in this process -------------------------------------------------------


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


def _keys(b, name: str = "default"):
    from broker.core.sources import shared_keys

    shared = b.broker.shared
    credential = shared.credential_of(b.broker.credentials[name])
    keys = shared_keys(b.broker.settings.profiles[name], credential)
    assert keys is not None
    return keys


async def _shared_state(b) -> dict:
    return (await (await b.get("/v1/profiles")).json())["shared"]


# -- one SharedCache, driven directly ----------------------------------------------------------


KEY = bytes(range(32))
IDS = RefreshIds("corr", "req")
KEYS = (CLIENT_ID, TENANT, "https://api.partnercenter.microsoft.com/.default")
POLICY = Policy(
    refresh_ahead=0.3, min_refresh_margin=60, min_remaining=30, wait_timeout=3, warm=False
)


def shared_settings(url: str, **kwargs: Any) -> SharedSettings:
    return SharedSettings(redis_url=url, key=Secret(KEY.hex()), **kwargs)


class Broker:
    """One SharedCache with what a reader can see of it: its log lines, metrics and status."""

    def __init__(self, s: SharedSettings | None, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.stream = io.StringIO()
        self.metrics = Metrics()
        self.cache = SharedCache(
            s, clock=self.clock, log=make_logger(stream=self.stream), metrics=self.metrics
        )
        self.calls = 0

    def lines(self, event: str | None = None) -> list[dict]:
        out = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [x for x in out if event is None or x["event"] == event]

    def counted(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "broker_shared_cache_total", {"result": result}
        )
        return value or 0.0

    def connected_gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("broker_shared_cache_connected")

    def token(self, lifetime: float = 3600.0, value: str | None = None) -> Token:
        now = self.clock.monotonic()
        return Token(
            value=value or f"token-{self.calls}",
            token_type="Bearer",
            received_mono=now,
            expires_mono=now + lifetime,
            received_wall=self.clock.time(),
        )

    def upstream(self, lifetime: float = 3600.0, before: Callable | None = None):
        """A fetch that counts its calls and checks it was handed the caller's ids."""

        async def fetch(ids: RefreshIds) -> Token:
            assert ids is IDS
            self.calls += 1
            if before is not None:
                result = before()
                if asyncio.iscoroutine(result):
                    await result
            return self.token(lifetime)

        return fetch

    def wrapped(self, **kwargs: Any):
        return self.cache.wrap(self.upstream(**kwargs), KEYS, POLICY)

    @property
    def name(self) -> str:
        return self.cache.name(*KEYS)


async def started(url: str, clock: FakeClock | None = None, **kwargs: Any) -> Broker:
    b = Broker(shared_settings(url, **kwargs), clock)
    await b.cache.start()
    return b


# -- servers on loopback -----------------------------------------------------------------------


class Proxy(LoopbackServer):
    """TCP on loopback in front of the real Redis' unix socket: records every command (with the
    time it arrived) and lets a test act before a command goes on, or drop a connection."""

    def __init__(self, redis_socket: str) -> None:
        self.target = redis_socket
        self.seen: list[tuple[float, list[bytes]]] = []
        self.before: Callable[[list[bytes]], Any] | None = None
        self.drop_once: bytes | None = None  # the first command with this verb: hang up
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def named(self, verb: bytes) -> list[list[bytes]]:
        return [c for _, c in self.seen if c[0].upper() == verb]

    async def __aenter__(self) -> Proxy:
        async def handle(reader, writer) -> None:
            self.accepted += 1
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)

            async def downstream() -> None:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()

            pump = asyncio.create_task(downstream())
            buffer = bytearray()
            try:
                while data := await reader.read(65536):
                    buffer += data
                    for command in resp_commands(buffer):
                        self.seen.append((time.monotonic(), command))
                        if self.drop_once is not None and command[0].upper() == self.drop_once:
                            self.drop_once = None
                            return
                        if self.before is not None:
                            result = self.before(command)
                            if asyncio.iscoroutine(result):
                                await result
                        up_writer.write(_encode(command))
                    await up_writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                pump.cancel()
                up_writer.close()
                writer.close()

        return await self._listen(handle)


def _encode(command: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for part in command:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Misbehaving(LoopbackServer):
    """A TCP server that speaks just enough Redis to misbehave: answers every command after
    `delay` seconds (real time, on the test's own event loop; only the first `slow` commands
    of each connection when given), or closes each connection."""

    def __init__(self, *, delay: float = 0.0, close: bool = False, slow: int | None = None) -> None:
        self.delay, self.close, self.slow = delay, close, slow
        self.accepts: list[float] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Misbehaving:
        async def handle(reader, writer) -> None:
            self.accepts.append(time.monotonic())
            buffer = bytearray()
            answered = 0
            try:
                while data := await reader.read(65536):
                    if self.close:
                        return
                    buffer += data
                    for command in resp_commands(buffer):
                        answered += 1
                        if self.slow is None or answered <= self.slow:
                            await asyncio.sleep(self.delay)
                        if command[0].upper() == b"PING":
                            writer.write(b"+PONG\r\n")
                        else:
                            writer.write(b"+OK\r\n")
                        await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        return await self._listen(handle)


# -- configuration -----------------------------------------------------------------------------


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
    out = capsys.readouterr().out
    assert "Redis answered PING" in out
    first, *_, last = out.splitlines()  # OK only once the online check has passed
    assert first == f"{config}: valid; online checks to come"
    assert last == f"{config}: OK (online checks passed)"
    config.write_text(base + shared_text(f"unix://{tmp_path}/no.sock", shared_key))
    assert main(["check-config", "--config", str(config)]) == 0  # offline: not asked
    assert main(["check-config", "--config", str(config), "--online"]) == 1
    assert "shared.redis_url: Redis did not answer" in capsys.readouterr().err


# -- names, values and the stored token --------------------------------------------------------


def test_key_names_and_sealed_values_are_the_fleets_published_format() -> None:
    """Brokers of two versions in one fleet must agree byte for byte: the key is the prefix and
    HMAC-SHA256 (under HMAC(key, label)) of the lower-cased ids; the value is 0x01, a 12-byte
    nonce and AES-256-GCM with the key name as associated data."""
    b = Broker(shared_settings("redis://h:1/0", prefix="team-a"))
    name_key = hmac.new(KEY, b"pc-token-broker redis key names", hashlib.sha256).digest()
    material = json.dumps(["abc-client", "contoso.example", "Scope/X"]).encode()
    expected = "team-a:tok:" + hmac.new(name_key, material, hashlib.sha256).hexdigest()
    assert b.cache.name("ABC-Client", "Contoso.EXAMPLE", "Scope/X") == expected
    assert b.cache.name("abc-client", "contoso.example", "Scope/X") == expected
    sealed = b.cache.seal(expected, b"plain")
    assert sealed[:1] == b"\x01" and len(sealed) == 1 + 12 + len(b"plain") + 16
    assert AESGCM(KEY).decrypt(sealed[1:13], sealed[13:], expected.encode()) == b"plain"
    nonce = bytes(12)
    foreign = b"\x01" + nonce + AESGCM(KEY).encrypt(nonce, b"from another version", b"k")
    assert b.cache.open("k", foreign) == b"from another version"
    # the shortest value there is (empty plain text: 29 bytes) opens; anything shorter is junk
    empty = b.cache.seal("k", b"")
    assert len(empty) == 29 and b.cache.open("k", empty) == b""
    for junk in (b"\x01" + bytes(6), b"\x01" + bytes(12), b"\x01" + bytes(20), empty[:-1]):
        assert b.cache.open("k", junk) is None
    assert b.counted("undecryptable") == 4


def test_what_each_token_is_shared_under_is_the_fleets_published_format() -> None:
    """The (client id, tenant, what, profile, credential id) a key name is made from, for every
    kind of token: brokers of two versions in one fleet must name the same keys. A user's token
    (refresh_token grant) is keyed apart from the app's; its rotated refresh token under its
    own name. Changed on purpose by issue 23 item 1: the profile and its credential id (an
    HMAC of the secret, the certificate's thumbprint or the refresh token's lineage under
    HMAC(key, "pc-token-broker credential ids")) are part of every key, so no token crosses to
    another profile."""
    from broker.config.settings import ProfileSettings
    from broker.core.cache.shared import shared_key

    scope, url = "https://api.partnercenter.microsoft.com/.default", "https://pc.example/v3/gt"
    app = ProfileSettings(
        name="p",
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        credential="client_secret",
        generatetoken_url=url,
        authority="https://login.example",
        scope=scope,
        refresh_ahead=0.25,
        min_refresh_margin=60,
        min_remaining=30,
        upstream_timeout=10,
        warm=False,
    )
    user = dataclasses.replace(app, credential="refresh_token")
    c = "cred-id"
    assert shared_key(app, credential=c) == shared_key(app, "aad", credential=c)
    assert shared_key(app, credential=c) == (CLIENT_ID, TENANT, scope, "p", c)
    assert shared_key(app, "partner", credential=c) == (
        CLIENT_ID,
        TENANT,
        f"{scope} > {url}",
        "p",
        c,
    )
    assert shared_key(user, credential=c) == (CLIENT_ID, TENANT, f"user {scope}", "p", c)
    assert shared_key(user, "partner", credential=c) == (
        CLIENT_ID,
        TENANT,
        f"user {scope} > {url}",
        "p",
        c,
    )
    assert shared_key(user, "refresh_token", credential=c) == (
        CLIENT_ID,
        TENANT,
        f"refresh_token {scope}",
        "p",
        c,
    )
    assert shared_key(app, credential=c, tenant="fabrikam.example", scope="g/.default") == (
        CLIENT_ID,
        "fabrikam.example",
        "g/.default",
        "p",
        c,
    )
    with pytest.raises(ValueError, match="no shared key for 'mirror'"):
        shared_key(app, "mirror", credential=c)
    # the credential id and the key name of such a tuple, byte for byte
    b = Broker(shared_settings("redis://h:1/0"))
    id_key = hmac.new(KEY, b"pc-token-broker credential ids", hashlib.sha256).digest()
    material = json.dumps(["client_secret", "s3cret-value"]).encode()
    expected = hmac.new(id_key, material, hashlib.sha256).hexdigest()
    assert b.cache.credential_id("client_secret", "s3cret-value") == expected
    assert b.cache.credential_id("client_secret", "another-secret") != expected
    name_key = hmac.new(KEY, b"pc-token-broker redis key names", hashlib.sha256).digest()
    parts = json.dumps([CLIENT_ID.lower(), TENANT.lower(), scope, "p", expected]).encode()
    digest = hmac.new(name_key, parts, hashlib.sha256).hexdigest()
    assert b.cache.name(*shared_key(app, credential=expected)) == f"pc-token-broker:tok:{digest}"


def test_an_undecryptable_entry_is_logged_once_per_key_for_at_most_1024_keys() -> None:
    b = Broker(shared_settings("redis://h:1/0"))
    for i in range(1025):
        assert b.cache.open(f"key-{i}", b"\x01" + bytes(40)) is None
    assert b.cache.open("key-0", b"\x01" + bytes(40)) is None
    lines = b.lines("shared_entry_undecryptable")
    assert len(lines) == 1024  # the 1025th key is not remembered, nor logged
    assert lines[0]["key"] == "key-0" and lines[0]["component"] == "shared"
    assert lines[0]["note"] == "written with another key_file, or tampered with; ignored"
    assert lines[0]["level"] == "warning"
    assert b.counted("undecryptable") == 1026


def _stored(b: Broker, **fields: Any) -> bytes:
    now = b.clock.time()
    data = {"v": "tok", "t": "Bearer", "e": now + 100, "l": 3600, **fields}
    return json.dumps(data).encode()


def test_a_stored_token_is_re_anchored_on_this_hosts_clocks() -> None:
    """Expiry is stored as wall-clock time and lifetime: a reader's token has the time left by
    its own wall clock (never more than the lifetime) and the matching age."""
    b = Broker(shared_settings("redis://h:1/0"))
    now_mono, now_wall = b.clock.monotonic(), b.clock.time()
    token = b.cache.store.token(_stored(b, e=now_wall + 100, l=3600))
    assert token is not None
    assert (token.value, token.token_type) == ("tok", "Bearer")
    assert token.expires_mono == pytest.approx(now_mono + 100)
    assert token.received_mono == pytest.approx(now_mono - 3500)
    assert token.received_wall == pytest.approx(now_wall - 3500)
    assert token.lifetime == pytest.approx(3600)
    # a writer whose wall clock runs ahead: never more life than the lifetime
    ahead = b.cache.store.token(_stored(b, e=now_wall + 9000, l=600))
    assert ahead is not None and ahead.remaining(now_mono) == pytest.approx(600)
    assert ahead.received_mono == pytest.approx(now_mono)
    # lifetimes: (0, 24 h]; time left: more than nothing
    for lifetime, accepted in ((1.0, True), (86400, True), (86400.5, False), (0, False)):
        got = b.cache.store.token(_stored(b, e=now_wall + 0.5, l=lifetime))
        assert (got is not None) is accepted, lifetime
    assert b.cache.store.token(_stored(b, e=now_wall + 0.5, l=10)) is not None
    assert b.cache.store.token(_stored(b, e=now_wall, l=10)) is None
    assert b.cache.store.token(_stored(b, e=now_wall - 5, l=10)) is None
    for bad in ({"t": 5}, {"v": 5}, {"v": None, "t": None}, {"e": "soon"}):
        assert b.cache.store.token(_stored(b, **bad)) is None, bad


def test_a_token_is_fresh_only_before_the_earliest_refresh_point() -> None:
    b = Broker(shared_settings("redis://h:1/0"))
    token = b.token(3600)
    at = schedule.refresh_at(
        token,
        refresh_ahead=POLICY.refresh_ahead,
        min_refresh_margin=POLICY.min_refresh_margin,
        min_remaining=POLICY.min_remaining,
        rand=lambda: 1.0,  # the earliest point any broker's jitter could pick
    )
    b.clock.advance(at - b.clock.monotonic() - 1)
    assert b.cache.store.fresh(token, POLICY)
    b.clock.advance(2)
    assert not b.cache.store.fresh(token, POLICY)
    # at the refresh point exactly: due, not fresh (min_remaining = lifetime puts it at receipt)
    at_receipt = Policy(
        refresh_ahead=0.1, min_refresh_margin=1, min_remaining=60, wait_timeout=3, warm=False
    )
    assert not b.cache.store.fresh(b.token(60), at_receipt)


def test_describe_gives_the_class_and_first_line_only() -> None:
    assert describe(TimeoutError("anything")) == "timed out"
    assert describe(ConnectionError("refused\nsecond line")) == "ConnectionError: refused"
    assert describe(OSError()) == "OSError: "
    long = describe(ValueError("x" * 500))
    assert len(long) == 200 and long.startswith("ValueError: xxx")


def test_where_never_shows_a_userinfo_part() -> None:
    assert where("redis://fleet:pw@h:1/0") == "redis://h:1/0"
    assert where("rediss://user:p@ss@h:6380/2") == "rediss://h:6380/2"
    assert where("redis://fleet@h:1/0?name=a://b") == "redis://h:1/0?name=a://b"
    assert where("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_a_broker_without_shared_never_loads_redis_py_or_the_aead() -> None:
    """redis-py (the client and its Lock) and AES-GCM are imported only when [shared] is
    configured: they would be a fifth of every broker's start-up time."""
    code = (
        "import sys, broker.cli.main, broker.http.app, broker.core.service\n"
        "from broker.core.cache.shared import SharedCache\n"
        "from broker.observe.metrics import Metrics\n"
        "from broker.observe.logs import make_logger\n"
        "from tests.conftest import FakeClock\n"
        "SharedCache(None, clock=FakeClock(), log=make_logger(), metrics=Metrics())\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'redis'\n"
        "          or m == 'cryptography.hazmat.primitives.ciphers.aead']\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


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


# -- life cycle --------------------------------------------------------------------------------


async def test_a_new_cache_is_connected_counts_nothing_and_is_safe_before_start() -> None:
    b = Broker(shared_settings("redis://fleet:pw@h:1/0"))
    assert b.cache.enabled and b.cache.state == "connected" and b.connected_gauge() == 1
    status = b.cache.status()
    assert status.redis_url == "redis://h:1/0" and status.last_error is None
    assert (status.hits, status.misses, status.lease_waits, status.errors) == (0, 0, 0, 0)
    assert await b.cache.get_versioned("x") is None
    assert await b.cache.put_versioned("x", 1, "v", 60) is False
    await b.cache.close()  # never started: nothing to close, no error
    off = Broker(None)
    assert off.cache.state == "off" and off.connected_gauge() == 0
    assert off.cache.status().redis_url is None
    await off.cache.start()
    await off.cache.close()
    assert off.cache.state == "off"


async def test_start_logs_connected_naming_redis_without_credentials(redis_db) -> None:
    b = Broker(shared_settings(redis_db.url))
    await b.cache.start()
    try:
        (line,) = b.lines("shared_cache_connected")
        assert line["redis"] == redis_db.url and line["component"] == "shared"
        assert b.cache.state == "connected" and b.connected_gauge() == 1
    finally:
        await b.cache.close()
    assert not [t for t in asyncio.all_tasks() if "reconnect" in repr(t.get_coro())]


def test_no_shared_section_means_the_identity_wrapper() -> None:
    from broker.observe.logs import make_logger
    from broker.observe.metrics import Metrics

    cache = SharedCache(None, clock=FakeClock(), log=make_logger(), metrics=Metrics())

    async def fetch(_ids):
        raise AssertionError

    assert cache.wrap(fetch, ("c", "t", "s"), None) is fetch  # type: ignore[arg-type]
    assert not cache.enabled and cache.status().state == "off"


# -- one upstream call for the fleet -----------------------------------------------------------


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
    keys = _keys(a)
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


# -- the wrapped fetch: hit, miss, the lease ---------------------------------------------------


async def test_a_cold_fetch_takes_a_random_expiring_lease_writes_with_the_ttl_and_releases(
    redis_db,
) -> None:
    async with Proxy(str(redis_db.socket)) as proxy:
        a = await started(proxy.url, lock_timeout=3600)
        client = redis_db.client()
        lease = a.name + ":lease"
        seen_lease: list[tuple[bytes, int]] = []
        try:
            fetch = a.cache.wrap(
                a.upstream(
                    before=lambda: seen_lease.append((client.get(lease), client.pttl(lease)))
                ),
                KEYS,
                POLICY,
            )
            token = await fetch(IDS)
            assert a.calls == 1 and token.value == "token-1"
            ((value, pttl),) = seen_lease
            assert re.fullmatch(rb"[0-9a-f]{32}", value)  # 128 random bits
            assert 3_500_000 < pttl <= 3_600_000
            (set_lease,) = [c for c in proxy.named(b"SET") if c[1] == lease.encode()]
            options = [o.upper() for o in set_lease[3:]]  # in the order the client writes them
            assert b"NX" in options and options[options.index(b"PX") + 1] == b"3600000"
            (write,) = [c for c in proxy.named(b"SET") if c[1] == a.name.encode()]
            assert write[3:] == [b"PX", b"3600000"]  # the token's time left, in ms
            assert not client.exists(lease)  # released at once
            assert 3_500_000 < client.pttl(a.name) <= 3_600_000
            s = a.cache.status()
            assert (s.hits, s.misses, s.lease_waits, s.errors) == (0, 1, 0, 0)
            assert a.counted("miss") == 1 and a.counted("hit") == 0

            # another broker (its own clocks, 100 s later) takes it from Redis: no fetch, no lease
            other = FakeClock(wall_start=a.clock.time() + 100)  # its own monotonic clock
            b = await started(redis_db.url, other)
            try:
                got = await b.wrapped()(IDS)
                assert b.calls == 0 and got.value == "token-1"
                assert got.remaining(other.monotonic()) == pytest.approx(3500)
                assert got.received_wall == pytest.approx(a.clock.time())
                s = b.cache.status()
                assert (s.hits, s.misses, s.lease_waits) == (1, 0, 0)
                assert b.counted("hit") == 1 and b.counted("miss") == 0
            finally:
                await b.cache.close()
        finally:
            await a.cache.close()


async def test_tokens_with_a_second_or_less_left_are_not_written(redis_db) -> None:
    b = await started(redis_db.url)
    client = redis_db.client()
    try:
        await b.cache.store.write(b.name, b.token(1.0))
        assert not client.exists(b.name)
        await b.cache.store.write(b.name, b.token(1.5))
        assert 1000 < client.pttl(b.name) <= 1500
    finally:
        await b.cache.close()


async def test_a_token_in_redis_past_its_refresh_point_is_fetched_anew(redis_db) -> None:
    a = await started(redis_db.url)
    b = await started(redis_db.url, a.clock)
    try:
        await a.wrapped()(IDS)
        token = a.token(3600)
        at = schedule.refresh_at(
            token,
            refresh_ahead=POLICY.refresh_ahead,
            min_refresh_margin=POLICY.min_refresh_margin,
            min_remaining=POLICY.min_remaining,
            rand=lambda: 1.0,
        )
        a.clock.advance(at - a.clock.monotonic() - 1)
        assert (await b.wrapped()(IDS)).value == "token-1" and b.calls == 0
        a.clock.advance(2)
        assert (await b.wrapped()(IDS)).value == "token-1" and b.calls == 1
    finally:
        await a.cache.close()
        await b.cache.close()


def _jwt(**claims: Any) -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


async def test_a_token_past_its_jwt_exp_is_a_miss_whatever_the_writers_clock_said(
    redis_db,
) -> None:
    """Issue 23 item 11. A writer whose wall clock runs 2 h ahead (it received the token with
    its clock right, then the clock stepped) stores the expiry by its clock: 2 h too late.
    A reader (the true time) must not serve that token past its JWT exp: the life left is the
    least of the stored expiry and the JWT's exp by the reader's clock; none left is a miss,
    fetched upstream and written over the stale entry."""
    reader_clock = FakeClock()
    now = reader_clock.time()
    writer = await started(redis_db.url, FakeClock(wall_start=now + 7200))
    reader = await started(redis_db.url, reader_clock)
    try:
        mono = writer.clock.monotonic()
        expired = _jwt(iat=now - 3660, exp=now - 60)  # Azure AD's: expired a minute ago
        stale = Token(  # received an hour ago (by the writer), 5 min left by its monotonic clock
            value=expired,
            token_type="Bearer",
            received_mono=mono - 3300,
            expires_mono=mono + 300,
            received_wall=now + 7200 - 3300,
        )
        await writer.cache.store.write(writer.name, stale)
        stored = json.loads(reader.cache.open(reader.name, redis_db.client().get(reader.name)))
        assert stored["e"] == pytest.approx(now + 7500)  # the writer's clock: 2 h too late
        got = await reader.wrapped()(IDS)
        assert got.value != expired and got.value == "token-1" and reader.calls == 1
        s = reader.cache.status()
        assert (s.hits, s.misses, s.errors) == (0, 1, 0)
        again = reader.cache.store.token(
            reader.cache.open(reader.name, redis_db.client().get(reader.name))
        )
        assert again is not None and again.value == "token-1"  # the stale entry is replaced
        # a JWT with life left is served for the least of the two: its exp by our clock
        short = _jwt(exp=now + 2000)
        entry = _stored(reader, v=short, e=now + 9000, l=3600)
        token = reader.cache.store.token(entry)
        assert token is not None
        assert token.remaining(reader_clock.monotonic()) == pytest.approx(2000)
        assert token.received_mono == pytest.approx(reader_clock.monotonic() - 1600)
        # an exp that is no finite number: not a token to serve
        assert reader.cache.store.token(_stored(reader, v=_jwt(exp=float("nan")))) is None
        assert reader.cache.store.token(_stored(reader, v=_jwt(exp=now - 1))) is None
        assert reader.cache.store.token(_stored(reader, v="not.a.jwt")) is not None
    finally:
        await writer.cache.close()
        await reader.cache.close()


async def test_a_token_landing_just_before_our_lease_is_served_and_the_lease_freed(
    redis_db,
) -> None:
    """Our read missed; another broker's write lands before our SET NX: we read again under the
    lease, serve that token without fetching, and release the lease at once."""
    async with Proxy(str(redis_db.socket)) as proxy:
        a = await started(proxy.url)
        other = await started(redis_db.url, a.clock)
        lease = (a.name + ":lease").encode()

        async def land(command: list[bytes]) -> None:
            if command[0].upper() == b"SET" and command[1] == lease:
                await other.cache.store.write(other.name, other.token(3600, "landed"))

        proxy.before = land
        try:
            got = await a.wrapped()(IDS)
            assert got.value == "landed" and a.calls == 0
            assert not redis_db.client().exists(lease)
            s = a.cache.status()
            assert s.state == "connected" and (s.hits, s.misses, s.errors) == (1, 1, 0)
        finally:
            await a.cache.close()
            await other.cache.close()


async def test_a_waiter_serves_the_token_another_broker_wrote_while_it_still_holds_the_lease(
    redis_db,
) -> None:
    a = await started(redis_db.url)
    other = await started(redis_db.url, a.clock)
    client = redis_db.client()
    lease = a.name + ":lease"
    client.set(lease, "another-broker", px=60_000)
    try:
        waiting = asyncio.create_task(a.wrapped()(IDS))
        await until(lambda: a.cache.status().lease_waits == 1, "a waits on the lease")
        await other.cache.store.write(other.name, other.token(3600, "theirs"))
        got = await asyncio.wait_for(waiting, 10)
        assert got.value == "theirs" and a.calls == 0
        assert client.get(lease) == b"another-broker"
        s = a.cache.status()
        assert (s.hits, s.misses, s.lease_waits) == (1, 1, 1)
    finally:
        await a.cache.close()
        await other.cache.close()


async def test_a_waiter_fetches_alone_exactly_at_a_third_of_wait_timeout(redis_db) -> None:
    async with Proxy(str(redis_db.socket)) as proxy:
        a = await started(proxy.url)
        client = redis_db.client()
        lease = a.name + ":lease"
        client.set(lease, "another-broker", px=60_000)
        try:
            waiting = asyncio.create_task(a.wrapped()(IDS))
            await until(lambda: a.cache.status().lease_waits == 1, "a waits on the lease")
            a.clock.advance(POLICY.wait_timeout / 3 - 0.001)
            polls = len(proxy.named(b"GET"))
            await until(lambda: len(proxy.named(b"GET")) >= polls + 3, "three more polls")
            assert not waiting.done() and a.calls == 0
            a.clock.advance(0.001)  # exactly a third of wait_timeout: 1.0 s
            got = await asyncio.wait_for(waiting, 10)
            assert a.calls == 1 and got.value == "token-1"
            assert client.get(lease) == b"another-broker"
            assert client.exists(a.name)  # written for the others
            (line,) = a.lines("shared_lease_wait_timeout")
            assert line["waited_s"] == pytest.approx(1.0) and line["level"] == "warning"
        finally:
            await a.cache.close()


async def test_a_failed_fetch_frees_the_lease_for_the_next_broker_at_once(redis_db) -> None:
    a = await started(redis_db.url)

    def fail() -> None:
        raise RuntimeError("upstream said no")

    try:
        with pytest.raises(RuntimeError, match="upstream said no"):
            await a.cache.wrap(a.upstream(before=fail), KEYS, POLICY)(IDS)
        assert not redis_db.client().exists(a.name + ":lease")
        assert a.cache.state == "connected"
    finally:
        await a.cache.close()


async def test_a_cancelled_fetch_frees_the_lease_and_stops_renewing_it(redis_db) -> None:
    """The fetch under the lease is cancelled (a shutdown: callers who go away never cancel
    it): the lease is released at once, not left to lapse (lock_timeout is an hour here), and
    its renewal stops; the cache stays connected."""
    a = await started(redis_db.url, lock_timeout=3600)
    client = redis_db.client()
    lease = a.name + ":lease"
    never = asyncio.Event()

    def renewing() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if "_renew_while_held" in repr(t.get_coro())]

    try:
        task = asyncio.create_task(a.cache.wrap(a.upstream(before=never.wait), KEYS, POLICY)(IDS))
        await until(lambda: client.exists(lease) and a.calls == 1, "the fetch holds the lease")
        assert len(renewing()) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not client.exists(lease)
        assert not client.exists(a.name)  # nothing written
        await until(lambda: not renewing(), "the renewal stops")
        assert a.cache.state == "connected" and a.cache.status().errors == 0
    finally:
        await a.cache.close()


async def test_the_lease_is_extended_every_third_of_lock_timeout_by_lock_timeout(
    redis_db,
) -> None:
    """lock_timeout = 1.2 s: a PEXPIRE of 1200 ms from the holder, at least 0.4 s apart."""
    from redis.asyncio.lock import Lock  # the lease is redis-py's Lock: its renewal script

    redis_db.client().script_load(Lock.LUA_REACQUIRE_SCRIPT)  # no NOSCRIPT round trip in timings
    async with Proxy(str(redis_db.socket)) as proxy:
        a = await started(proxy.url, lock_timeout=1.2)
        release = asyncio.Event()
        lease = (a.name + ":lease").encode()

        def extends() -> list[tuple[float, list[bytes]]]:
            """The renewals: every command on the lease but its SET until the fetch ends (then
            comes the release), whatever command and argument order the client uses."""
            return [(t, c) for t, c in proxy.seen if lease in c[1:] and c[0].upper() != b"SET"]

        async def slow() -> None:
            await until(lambda: len(extends()) >= 2, "two renewals")
            await release.wait()

        try:
            task = asyncio.create_task(a.cache.wrap(a.upstream(before=slow), KEYS, POLICY)(IDS))
            await until(lambda: len(extends()) >= 2, "two renewals")
            release.set()
            await asyncio.wait_for(task, 10)
            ((t1, first), (t2, _)) = extends()[:2]
            (set_at,) = [
                t for t, c in proxy.seen if c[0].upper() == b"SET" and c[1].endswith(b":lease")
            ]
            assert b"1200" in first[1:]  # extended by lock_timeout, in ms
            assert t1 - set_at >= 0.39 and t2 - t1 >= 0.39
            assert not a.lines("shared_lease_lost")
        finally:
            await a.cache.close()


async def test_a_lease_taken_over_mid_fetch_is_logged_and_left_to_its_new_holder(
    redis_db,
) -> None:
    a = await started(redis_db.url, lock_timeout=0.3)
    client = redis_db.client()
    lease = a.name + ":lease"

    async def stolen() -> None:
        client.set(lease, "thief", px=60_000)
        await until(lambda: a.lines("shared_lease_lost"), "the holder notices")

    try:
        token = await a.cache.wrap(a.upstream(before=stolen), KEYS, POLICY)(IDS)
        assert token.value == "token-1"
        (line,) = a.lines("shared_lease_lost")
        assert line["note"] == "another broker may fetch too" and line["level"] == "warning"
        assert line["component"] == "shared"
        assert client.get(lease) == b"thief"  # compare-and-delete: not ours to release
        assert client.exists(a.name)
    finally:
        await a.cache.close()


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
    lease = a.broker.shared.name(*_keys(a)["partner"]) + ":lease"
    first = asyncio.create_task(a.get("/v1/token"))
    client = redis_db.client()

    async def leased() -> bool:
        return bool(client.exists(lease))

    await until(leased, "a takes the lease", 5, every=0.05)
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
    lease = b.broker.shared.name(*_keys(b)["partner"]) + ":lease"
    client = redis_db.client()
    client.set(lease, "another-broker", px=60_000)
    answer = asyncio.create_task(b.get("/v1/token"))

    async def waiting() -> bool:
        return b.broker.shared.status().lease_waits == 1

    await until(waiting, "the broker waits on the lease", 5, every=0.05)
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


# -- Redis trouble never becomes a caller's error ----------------------------------------------


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

        await until(both_connected, "brokers reconnect to Redis", 10, every=0.05)
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


def _no_reconnect_task_left() -> bool:
    return not [
        t for t in asyncio.all_tasks() if not t.done() and "_reconnect_loop" in repr(t.get_coro())
    ]


async def test_redis_dying_mid_fetch_fails_no_caller_and_is_used_again_when_back(
    own_redis,
) -> None:
    """Redis killed while the upstream fetch runs: the caller gets its token (and an upstream
    error stays that error); the cache degrades once, with a log line, a metric and a status,
    then reconnects by itself when Redis is back."""
    b = await started(own_redis.url, timeout=0.5)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            token = await b.cache.wrap(b.upstream(before=own_redis.kill), KEYS, POLICY)(IDS)
            gc.collect()
        assert token.value == "token-1"
        assert not [w for w in caught if "never awaited" in str(w.message)]
        s = b.cache.status()
        assert s.state == "degraded" and s.errors == 1
        assert s.last_error is not None and s.last_error.startswith("ConnectionError: ")
        assert b.connected_gauge() == 0 and b.counted("error") == 1
        (line,) = b.lines("shared_cache_degraded")
        assert line["error"] == s.last_error and line["level"] == "warning"
        assert line["note"] == "fetching upstream on our own until Redis answers again"
        # degraded: straight upstream, no Redis call at all
        assert (await b.wrapped()(IDS)).value == "token-2"
        assert b.cache.status().errors == 1
        # the first reconnect attempt fails (Redis is still down) and says why: its own error,
        # named by class, in place of the first one
        first = s.last_error
        await until(lambda: b.cache.status().last_error not in (first, None), "a retry")
        assert (b.cache.status().last_error or "").startswith("ConnectionError: ")
        own_redis.start()
        await until(lambda: b.cache.state == "connected", "reconnected")
        assert b.connected_gauge() == 1
        lines = b.lines("shared_cache_connected")
        assert len(lines) == 2 and lines[1]["redis"] == own_redis.url
        assert b.cache.status().errors == 1
        assert (await b.wrapped()(IDS)).value == "token-3"
        assert own_redis.client().exists(b.name)
    finally:
        await b.cache.close()
    assert _no_reconnect_task_left()


async def test_an_upstream_error_stays_the_callers_error_when_redis_dies_too(own_redis) -> None:
    b = await started(own_redis.url, timeout=0.5)

    def die() -> None:
        own_redis.kill()
        raise RuntimeError("upstream said no")

    try:
        with pytest.raises(RuntimeError, match="upstream said no"):
            await b.cache.wrap(b.upstream(before=die), KEYS, POLICY)(IDS)
        assert b.cache.state == "degraded"
    finally:
        await b.cache.close()
    assert _no_reconnect_task_left()


async def test_reconnect_attempts_back_off_and_never_count_as_new_errors() -> None:
    """Start against a Redis that closes every connection: degraded at once, pings after
    0.5 s, then 1 s, then 2 s; once it answers, connected again with a log line."""
    async with Misbehaving(close=True) as server:
        b = await started(server.url, timeout=0.5)
        try:
            assert b.cache.state == "degraded"
            await until(lambda: len(server.accepts) >= 3, "two reconnect attempts", 15)
            first, second, third = server.accepts[:3]
            assert second - first >= 0.49 and third - second >= 0.99
            s = b.cache.status()
            # the error's class, then redis-py's own words (which vary between its releases)
            assert s.last_error is not None and s.last_error.startswith("ConnectionError: ")
            assert s.errors == 1 and len(b.lines("shared_cache_degraded")) == 1
            server.close = False
            await until(lambda: b.cache.state == "connected", "reconnected", 15)
            assert len(server.accepts) >= 3
            (line,) = b.lines("shared_cache_connected")
            assert line["redis"] == server.url and b.connected_gauge() == 1
        finally:
            await b.cache.close()
        assert _no_reconnect_task_left()


async def test_a_silent_redis_times_out_on_each_call_and_ping() -> None:
    """Every call is bounded by `timeout` on our side (the error says "timed out"), the first
    call and the reconnect pings alike."""
    async with Misbehaving(delay=100) as server:
        b = await started(server.url, timeout=0.2)
        try:
            s = b.cache.status()
            assert s.state == "degraded" and s.last_error == "timed out"
            await until(lambda: len(server.accepts) >= 3, "two reconnect pings", 15)
            assert b.cache.status().last_error == "timed out"
        finally:
            await b.cache.close()
        assert _no_reconnect_task_left()


async def test_calls_failing_together_degrade_once(redis_db) -> None:
    """Two fetches in flight when Redis stalls: both fail over to upstream, both count as an
    error, one warning and one reconnect task."""
    async with Misbehaving() as server:
        b = await started(server.url, timeout=0.2)
        try:
            assert b.cache.state == "connected"
            server.delay = 100
            one = b.cache.wrap(b.upstream(), ("a", "t", "s"), POLICY)
            two = b.cache.wrap(b.upstream(), ("b", "t", "s"), POLICY)
            tokens = await asyncio.gather(one(IDS), two(IDS))
            assert len(tokens) == 2 and b.calls == 2
            s = b.cache.status()
            assert s.state == "degraded" and s.errors == 2 and s.last_error == "timed out"
            assert len(b.lines("shared_cache_degraded")) == 1
            assert (
                len([t for t in asyncio.all_tasks() if "_reconnect_loop" in repr(t.get_coro())])
                == 1
            )
        finally:
            await b.cache.close()
        assert _no_reconnect_task_left()


# -- rotated refresh tokens --------------------------------------------------------------------


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
    name = a.broker.credentials["default"].refresh_token.shared_name
    assert name == b.broker.credentials["default"].refresh_token.shared_name  # one lineage
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


async def test_a_versioned_value_of_the_wrong_shape_reads_as_none() -> None:
    """HMGET answered with something that is no two-item array (a hostile server's +OK, whose
    two bytes would otherwise unpack as a version and a value): nothing usable, no crash."""
    for reply in (b"+OK\r\n", b"*1\r\n$1\r\n1\r\n", b"*2\r\n:1\r\n:2\r\n"):
        async with HostileRedis(reply, after_pong=True) as server:
            b = await started(server.url)
            try:
                assert b.cache.state == "connected"
                assert await b.cache.get_versioned("rt") is None
            finally:
                await b.cache.close()


async def test_versioned_values_newest_wins_with_their_ttl(redis_db) -> None:
    b = await started(redis_db.url)
    client = redis_db.client()
    try:
        assert await b.cache.put_versioned("rt", 1, "first", 3600) is True
        assert 3_500_000 < client.pttl("rt") <= 3_600_000
        assert await b.cache.get_versioned("rt") == (1, "first")
        assert await b.cache.put_versioned("rt", 1, "again", 3600) is False
        assert await b.cache.put_versioned("rt", 2, "second", 3600) is True
        assert await b.cache.get_versioned("rt") == (2, "second")
        # a value that is not UTF-8 still reads (with replacement characters)
        client.hset("odd", mapping={"v": "3", "c": b.cache.seal("odd#3", b"ok\xff")})
        assert await b.cache.get_versioned("odd") == (3, "ok\ufffd")
        # half a row, a version that is no number, a value sealed for another version: none
        client.hset("half", mapping={"v": "1"})
        client.hset("other-half", mapping={"c": b.cache.seal("other-half#1", b"x")})
        client.hset("nan", mapping={"v": "one", "c": b.cache.seal("nan#1", b"x")})
        client.hset("moved", mapping={"v": "2", "c": b.cache.seal("moved#1", b"x")})
        for name in ("half", "other-half", "nan", "moved", "absent"):
            assert await b.cache.get_versioned(name) is None, name
    finally:
        await b.cache.close()


async def test_versioned_values_fail_quietly_when_redis_is_gone(own_redis) -> None:
    b = await started(own_redis.url, timeout=0.5)
    try:
        assert await b.cache.put_versioned("rt", 1, "first", 60) is True
        own_redis.kill()
        assert await b.cache.put_versioned("rt", 2, "second", 60) is False
        assert b.cache.state == "degraded"
        assert await b.cache.put_versioned("rt", 3, "third", 60) is False
        assert await b.cache.get_versioned("rt") is None
    finally:
        await b.cache.close()


# -- connecting: credentials, one try, check-config's ping -------------------------------------


async def test_an_acl_user_and_password_are_what_the_client_logs_in_with(own_redis) -> None:
    admin = own_redis.client()
    admin.acl_setuser("fleet", enabled=True, passwords=["+pa:ss"], keys=["*"], commands=["+@all"])
    admin.config_set("requirepass", "the-default-users")
    try:
        good = await started(own_redis.url, username="fleet", password=Secret("pa:ss"), timeout=0.5)
        assert good.cache.state == "connected"
        assert (await good.wrapped()(IDS)).value == "token-1"
        assert good.cache.state == "connected"
        await good.cache.close()
        for kwargs in ({"password": Secret("pa:ss")}, {"username": "fleet"}):
            bad = await started(own_redis.url, timeout=0.5, **kwargs)
            assert bad.cache.state == "degraded", kwargs
            await bad.cache.close()
    finally:
        own_redis.kill()


async def test_a_dropped_connection_is_not_retried_but_degrades(redis_db) -> None:
    """One try per call: the fallback is upstream, not a retry loop against a sick Redis."""
    async with Proxy(str(redis_db.socket)) as proxy:
        proxy.drop_once = b"PING"  # after the handshake: a command redis-py could retry
        b = await started(proxy.url, timeout=0.5)
        try:
            assert b.cache.state == "degraded" and proxy.accepted == 1
            assert len(proxy.named(b"PING")) == 1
            # the error's class, then redis-py's own words (which vary between its releases)
            assert (b.cache.status().last_error or "").startswith("ConnectionError: ")
        finally:
            await b.cache.close()


# check-config's answer when the client's own socket timeout (max(timeout, 2 s)) ends the PING:
# the error's class, then redis-py's words (which vary between its releases).
CLIENT_TIMED_OUT = "Redis did not answer PING: TimeoutError: "


async def test_check_config_ping_gives_up_after_two_seconds_at_least(redis_db) -> None:
    """`check-config --online`: a Redis slower than max(timeout, 2 s) did not answer."""
    assert await ping(shared_settings(redis_db.url, timeout=0.2)) is None
    async with Misbehaving(delay=2.5) as server:
        message = await ping(shared_settings(server.url, timeout=0.2))
    # the client's read timeout, named by its class (the overall bound would say "timed out")
    assert message is not None and message.startswith(CLIENT_TIMED_OUT), message


async def test_check_config_ping_gives_up_after_three_seconds_in_all() -> None:
    """Each read is bounded by max(timeout, 2 s), and the whole PING (connecting, the handshake
    and the PING itself) by one second more: two answers of 1.75 s each are too slow."""
    async with Misbehaving(delay=1.75, slow=2) as server:
        message = await ping(shared_settings(server.url, timeout=0.2))
    assert message == "Redis did not answer PING: timed out"


async def test_check_config_ping_gives_up_connecting_after_two_seconds() -> None:
    """A Redis host that never completes the TCP handshake (its listen queue is full): the
    connect timeout, max(timeout, 2 s), says so before the overall bound."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue: further SYNs are dropped, connect hangs
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        message = await ping(shared_settings(f"redis://127.0.0.1:{port}/0", timeout=0.2))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    # the client's connect timeout, named by its class (nothing was read or written)
    assert message is not None and message.startswith(CLIENT_TIMED_OUT), message


# -- the status line ---------------------------------------------------------------------------


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
