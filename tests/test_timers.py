"""One timer heap per table (`Timers`): every armed entry falls due at its own deadline, on the
injected clock, whatever the order entries were armed, re-armed or retired in; a retired one
never fires; the clock's one timer always stands at the earliest live deadline."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from broker.core.cache import TokenCache
from broker.core.cache.timers import DUE_SLACK, SWEEP_AFTER, Timers
from broker.core.tokens import Token
from broker.observe.logs import make_logger
from broker.observe.metrics import Metrics
from tests.conftest import FakeClock
from tests.test_cache import POLICY


class Job:
    """A `Timed` that records when it fell due."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.next_at: float | None = None
        self.fired: list[float] = []

    def due(self) -> None:
        self.fired.append(self.clock.monotonic())

    def __lt__(self, other: object) -> bool:
        return False


def test_each_entry_falls_due_at_its_own_deadline_never_after_cancel(clock: FakeClock) -> None:
    """500 jobs armed, re-armed and cancelled in random order: each live one fires exactly once,
    at its last deadline; a cancelled one never; the clock holds one timer, at the earliest."""
    rng = random.Random(7)
    timers = Timers(clock)
    jobs = [Job(clock) for _ in range(500)]
    want: dict[int, float | None] = {}
    start = clock.monotonic()
    for _ in range(3000):
        i = rng.randrange(len(jobs))
        if rng.random() < 0.2:
            timers.cancel(jobs[i])
            want[i] = None
        else:
            at = start + rng.randrange(1, 200)  # ties among them too
            timers.arm(jobs[i], at)
            want[i] = at
        live = [at for at in want.values() if at is not None]
        assert clock.next_timer() == (min(live) if live else None)
    clock.advance(200)
    for i, job in enumerate(jobs):
        at = want.get(i)
        assert job.fired == ([] if at is None else [at]), i
        assert job.next_at is None
    assert clock.next_timer() is None


def test_stale_items_are_swept_so_retired_entries_are_not_kept(clock: FakeClock) -> None:
    """Arming and cancelling far-off deadlines many times keeps the heap near the live count."""
    timers = Timers(clock)
    keep = Job(clock)
    timers.arm(keep, clock.monotonic() + 10)
    for _ in range(10 * SWEEP_AFTER):
        job = Job(clock)
        timers.arm(job, clock.monotonic() + 3600)
        timers.cancel(job)
    assert len(timers._heap) <= 2 * SWEEP_AFTER + 2
    clock.advance(10)
    assert keep.fired == [clock.monotonic()]


def test_a_job_that_raises_leaves_the_others_due(clock: FakeClock) -> None:
    timers = Timers(clock)
    bad, good = Job(clock), Job(clock)

    def boom() -> None:
        raise RuntimeError("bug")

    bad.due = boom  # type: ignore[method-assign]
    timers.arm(bad, clock.monotonic() + 5)
    timers.arm(good, clock.monotonic() + 5)
    with pytest.raises(RuntimeError):
        clock.advance(5)
    clock.advance(0)  # the clock timer was set again for what is still due
    assert good.fired == [clock.monotonic()]


class EarlyClock(FakeClock):
    """Fires every timer a little before its deadline, as uvloop (whole milliseconds) may."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(self, deadline, callback):
        self.armed += 1
        assert self.armed < 100, "the timer keeps re-arming itself: the loop would spin"
        return super().call_at(deadline - DUE_SLACK * 0.9, callback)


def test_a_timer_fired_a_little_early_fires_its_entry_and_does_not_spin() -> None:
    clock = EarlyClock()
    timers = Timers(clock)
    job = Job(clock)
    timers.arm(job, clock.monotonic() + 10)
    clock.advance(10)
    assert len(job.fired) == 1 and clock.next_timer() is None


async def test_many_entries_of_one_table_each_refresh_ahead_and_none_serves_expired(
    clock: FakeClock,
) -> None:
    """Entries of one table with different lifetimes, made in an order unlike their refresh
    order: through one timer heap, each is refreshed ahead of its expiry with no caller, so a
    caller at any moment gets a cached token with min_remaining left, never an expired one."""
    lifetimes = [3600, 600, 1800, 300, 900, 1200, 2400, 450]
    calls: dict[int, int] = {}

    def fetcher(i: int):
        async def fetch(ids) -> Token:
            calls[i] = calls.get(i, 0) + 1
            now = clock.monotonic()
            return Token(f"t{i}-{calls[i]}", "Bearer", now, now + lifetimes[i], clock.time())

        return fetch

    cache = TokenCache(
        clock=clock, log=make_logger(stream=io.StringIO()), metrics=Metrics(), rand=lambda: 0.0
    )
    entries = [cache.add("p", f"k{i}", fetcher(i), POLICY) for i in range(len(lifetimes))]
    for entry in entries:
        await entry.get()
    for _ in range(2 * 3600 // 30):
        clock.advance(30)
        for _ in range(3):
            await asyncio.sleep(0)  # refreshes land
        for entry in entries:
            entry.last_used = clock.monotonic()  # in use: refreshed ahead, not left to lapse
            token = entry.peek()
            assert token is not None, f"{entry.kind}: no servable token: a refresh was missed"
            assert token.remaining(clock.monotonic()) >= POLICY.min_remaining
    for i, lifetime in enumerate(lifetimes):  # refreshed at about 3/4 of each lifetime
        assert calls[i] >= (2 * 3600) // lifetime, (i, calls[i])
    await cache.close()
