"""[shared] against someone with write access to Redis but no key (issue 23 item 12): rows
written by hand (a lease with no expiry or a huge one, a huge or insane version on a rotated
refresh token, a row of another type at a token key) bound to their own key, never the whole
shared cache, and healed by the next real write. Real Redis; the hostile rows written with
redis-py's own client; the broker's side on a fake clock that never moves unless told."""

from __future__ import annotations

import asyncio

import pytest

from tests.test_shared import IDS, POLICY, started


async def test_a_lease_with_no_expiry_is_lapsed_and_one_beyond_lock_timeout_bounded(
    redis_db,
) -> None:
    """A lease key SET by hand with no TTL: no broker's lease (every one has PX), so it is
    treated as lapsed: the cold fetch takes the lease at once (the fake clock never moves, so
    without the bound it would wait forever), fetches once, writes and releases. A lease with
    a TTL of 31 years is cut to lock_timeout, its value left alone: the waiter waits its third
    of wait_timeout as for any held lease, and the row is gone within lock_timeout."""
    a = await started(redis_db.url, lock_timeout=15)
    client = redis_db.client()
    lease = a.name + ":lease"
    try:
        client.set(lease, "hostile")  # no expiry
        assert client.pttl(lease) == -1
        token = await asyncio.wait_for(a.wrapped()(IDS), 5)
        assert token.value == "token-1" and a.calls == 1
        assert not client.exists(lease)  # taken, then released
        assert client.exists(a.name)
        assert a.cache.state == "connected" and a.cache.status().errors == 0

        # a lease of another type with no expiry: the same
        client.delete(a.name)
        client.rpush(lease, "x")
        token = await asyncio.wait_for(a.wrapped()(IDS), 5)
        assert token.value == "token-2" and a.calls == 2 and not client.exists(lease)

        client.delete(a.name)
        client.set(lease, "hostile", px=10**12)
        waiting = asyncio.create_task(a.wrapped()(IDS))
        await _until(lambda: a.cache.status().lease_waits == 1)
        assert 0 < client.pttl(lease) <= 15_000 and client.get(lease) == b"hostile"
        a.clock.advance(POLICY.wait_timeout / 3)
        assert (await asyncio.wait_for(waiting, 5)).value == "token-3"
        assert client.get(lease) == b"hostile"  # not ours to delete: it lapses by itself

        # a lease within lock_timeout is left as it is
        client.delete(a.name)
        client.set(lease, "another-broker", px=9_000)
        waiting = asyncio.create_task(a.wrapped()(IDS))
        await _until(lambda: a.cache.status().lease_waits == 2)
        assert 8_000 < client.pttl(lease) <= 9_000
        a.clock.advance(POLICY.wait_timeout / 3)
        await asyncio.wait_for(waiting, 5)
    finally:
        await a.cache.close()


@pytest.mark.parametrize(
    "version",
    [
        b"99999999999999999999999999",
        b"9007199254740993",
        b"1000003",
        b"1e400",
        b"nan",
        b"-5",
        b"1.5",
        b"inf",
        b"seven",
    ],
)
async def test_a_hand_written_version_never_stops_rotations_from_being_shared(
    redis_db, version
) -> None:
    """A rotated refresh token at version 1; someone sets its version to something no broker
    writes (absurdly ahead, beyond 2**53, not an integer). That version is ignored for this
    key only: the next real rotation (version 2) overwrites it and is read back."""
    b = await started(redis_db.url)
    client = redis_db.client()
    try:
        assert await b.cache.put_versioned("rt", 1, "first", 3600) is True
        client.hset("rt", "v", version)
        assert await b.cache.get_versioned("rt") is None  # nothing usable there
        assert await b.cache.put_versioned("rt", 2, "second", 3600) is True
        assert await b.cache.get_versioned("rt") == (2, "second")
        assert 3_500_000 < client.pttl("rt") <= 3_600_000
        assert await b.cache.put_versioned("rt", 1, "older", 3600) is False  # newest still wins
        assert await b.cache.put_versioned("rt", 2 + 10**6, "far-but-real", 3600) is True
        assert b.cache.state == "connected" and b.cache.status().errors == 0
    finally:
        await b.cache.close()


async def test_a_row_of_another_type_is_its_own_keys_miss_not_a_redis_failure(redis_db) -> None:
    """A list at a token key (GET answers WRONGTYPE), a string at a rotated refresh token's
    (HMGET and the versioned script answer WRONGTYPE): that key is a miss, logged once, the
    shared cache stays connected for every other key, and the next write replaces the row."""
    a = await started(redis_db.url)
    client = redis_db.client()
    try:
        client.rpush(a.name, "not", "a", "token")
        other = a.cache.wrap(a.upstream(), ("other-client", "t", "s"), POLICY)
        assert (await other(IDS)).value == "token-1"  # another key, written normally
        token = await a.wrapped()(IDS)
        assert token.value == "token-2" and a.calls == 2
        s = a.cache.status()
        assert s.state == "connected" and s.errors == 0, s
        assert client.type(a.name) == b"string"  # our write replaced the list
        assert (await a.wrapped()(IDS)).value == "token-2" and a.calls == 2  # a hit now
        (line,) = a.lines("shared_entry_unusable")
        assert line["key"] == a.name and line["error"].startswith("ResponseError: WRONGTYPE")
        assert line["level"] == "warning" and a.counted("unusable") == 2  # read, read again
        assert a.connected_gauge() == 1

        client.set("rt", "a string")
        assert await a.cache.get_versioned("rt") is None
        assert await a.cache.put_versioned("rt", 1, "first", 60) is True
        assert await a.cache.get_versioned("rt") == (1, "first")
        client.hset("hash-at-token", "v", "1")
        assert await a.cache.store.read("hash-at-token", POLICY) is None
        assert a.cache.state == "connected" and a.cache.status().errors == 0
        assert len(a.lines("shared_entry_unusable")) == 3  # one line per key
    finally:
        await a.cache.close()


async def _until(condition, timeout: float = 5.0) -> None:
    from tests.support import until

    await until(condition, "the condition", timeout)
