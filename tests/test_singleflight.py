"""SingleFlight: one task per key, joined by every caller, ordered with gates (no sleeping)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from broker.core.cache.singleflight import SingleFlight


class Gate:
    """A flight that starts, then waits for the test to let it land."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    def __call__(self, value: object = "token", error: BaseException | None = None):
        async def run() -> object:
            self.calls += 1
            self.started.set()
            await self.release.wait()
            if error is not None:
                raise error
            return value

        return run


async def test_callers_of_one_key_share_one_flight_and_other_keys_fly_apart() -> None:
    flights: SingleFlight[str, object] = SingleFlight()
    gate = Gate()
    first = flights.join("a", gate("A"))
    again = flights.join("a", gate("never started"))
    other = flights.join("b", gate("B"))
    assert first is again and first is not other
    assert "a" in flights and len(flights) == 2 and set(flights.tasks()) == {first, other}
    gate.release.set()
    assert await asyncio.gather(first, again, other) == ["A", "A", "B"]
    assert gate.calls == 2
    assert len(flights) == 0 and flights.get("a") is None


async def test_a_landed_flight_is_never_joined_so_a_failure_is_not_cached() -> None:
    flights: SingleFlight[str, object] = SingleFlight()
    gate = Gate()
    gate.release.set()
    failed = flights.join("a", gate(error=ValueError("upstream said no")))
    with pytest.raises(ValueError, match="upstream said no"):
        await failed
    assert "a" not in flights  # removed inside the task, before anyone could join it
    assert await flights.join("a", gate("fresh")) == "fresh"
    assert gate.calls == 2


async def test_a_waiter_that_gives_up_or_is_cancelled_never_cancels_the_flight() -> None:
    flights: SingleFlight[str, object] = SingleFlight()
    gate = Gate()
    task = flights.join("a", gate("token"))
    await gate.started.wait()
    with pytest.raises(LookupError, match="not yet"):
        await SingleFlight.wait(task, 0.01, lambda: LookupError("not yet"))
    impatient = asyncio.ensure_future(SingleFlight.wait(task, 60, lambda: LookupError("x")))
    await asyncio.sleep(0)  # let it start waiting
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert not task.done() and "a" in flights
    gate.release.set()
    assert await SingleFlight.wait(task, 60, lambda: LookupError("x")) == "token"


async def test_an_unawaited_failed_flight_logs_no_unretrieved_exception() -> None:
    flights: SingleFlight[str, object] = SingleFlight()
    gate = Gate()
    gate.release.set()
    seen: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        task = flights.join("a", gate(error=RuntimeError("nobody listens")))
        while not task.done():
            await asyncio.sleep(0)
        del task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert seen == []
