"""A connection's deadline (`broker.http.deadline`): moved often, kept with one loop timer,
and due exactly when the deadline in force comes. Driven by a fake loop's clock."""

from __future__ import annotations

from broker.http.deadline import Deadline


class Timer:
    def __init__(self, when: float, callback) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """What a Deadline uses of an event loop: call_at, run by `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def call_at(self, when: float, callback) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, to: float) -> None:
        self.now = to
        while due := [t for t in self.pending() if t.when <= to]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback()


def deadline() -> tuple[Deadline, Loop, list[float]]:
    loop, fired = Loop(), []
    d = Deadline(loop, lambda: fired.append(loop.now))  # type: ignore[arg-type]
    return d, loop, fired


def test_a_deadline_moved_later_is_due_then_and_not_before():
    d, loop, fired = deadline()
    d.set(10.0)
    d.set(20.0)  # the next head began: its own deadline
    loop.advance(10.0)
    assert fired == []
    assert len(loop.pending()) == 1  # the timer set itself again for 20
    loop.advance(20.0)
    assert fired == [20.0]


def test_a_deadline_moved_earlier_is_due_at_once_then():
    """A reload shortened read_timeout: the timer set for the old deadline would be late."""
    d, loop, fired = deadline()
    d.set(30.0)
    d.set(5.0)
    loop.advance(5.0)
    assert fired == [5.0]
    loop.advance(30.0)
    assert fired == [5.0]  # once


def test_a_met_deadline_is_never_due():
    d, loop, fired = deadline()
    d.set(10.0)
    d.at = 0.0  # the head arrived in time
    loop.advance(100.0)
    assert fired == []


def test_moving_a_deadline_later_makes_no_timer():
    """Many heads, each with a later deadline, on one connection: one timer, never more."""
    d, loop, fired = deadline()
    for n in range(1, 100):
        d.set(float(n))
        d.at = 0.0
    assert len(loop.timers) == 1
    d.set(1000.0)
    loop.advance(1000.0)
    assert fired == [1000.0]


def test_a_cancelled_deadline_leaves_no_timer():
    d, loop, fired = deadline()
    d.set(10.0)
    d.cancel()
    assert loop.pending() == []
    loop.advance(10.0)
    assert fired == []
    d.set(20.0)  # set again after all: a timer of its own again
    loop.advance(20.0)
    assert fired == [20.0]
