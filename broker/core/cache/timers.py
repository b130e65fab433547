"""One timer for a whole table of entries: a heap of (deadline, entry) on one clock timer.

A timer per entry costs an event-loop handle and a bound method each (~200 bytes); a customer-
tenant profile holds up to `max_customer_tokens` entries. Here an entry costs one heap item.

- `arm(entry, at)` sets `entry.next_at = at` and pushes (at, entry); `cancel(entry)` clears
  `next_at`. An item is live while its entry's `next_at` is still its deadline: a re-armed or
  cancelled entry leaves its old item behind (stale), skipped when it comes up, and swept out
  when stale items outnumber live ones, so retired entries are not kept alive for long.
- The one clock timer always stands at the earliest live deadline (none when nothing is
  armed), so an injected fake clock sees exactly when the next refresh is due, and drives it.
- When it fires, every entry due by then has `next_at` cleared and its `due()` called, in
  deadline order; an entry may re-arm itself from there.
"""

from __future__ import annotations

import heapq
from typing import Protocol

from broker.core.tokens.clock import Clock, TimerHandle

# Sweep stale items out once there are more of them than this and than live ones.
SWEEP_AFTER = 64

# An item this close to its deadline when the clock timer fires is due: uvloop keeps time in
# whole milliseconds and may fire up to one early; re-arming for the rest would spin the loop.
DUE_SLACK = 0.001


class Timed(Protocol):
    next_at: float | None

    def due(self) -> None: ...

    def __lt__(self, other: object, /) -> bool:
        """Two due at the same instant are compared (heap items are (deadline, entry)): the
        answer is False both ways, for no order among them (no tie-breaker to store)."""
        ...


class Timers:
    """Deadlines of many entries on one clock timer. Event loop only."""

    __slots__ = ("_at", "_clock", "_handle", "_heap", "_stale")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, Timed]] = []
        # Items in the heap whose entry moved on, about (re-arming back to an old deadline
        # leaves two alike: only a guide for when to sweep).
        self._stale = 0
        self._handle: TimerHandle | None = None
        self._at: float | None = None  # the clock timer's deadline

    def arm(self, entry: Timed, at: float) -> None:
        """Call `entry.due()` once the clock reaches `at` (replacing its earlier deadline)."""
        if entry.next_at == at:
            return
        if entry.next_at is not None:
            self._stale += 1
        entry.next_at = at
        heapq.heappush(self._heap, (at, entry))
        self._settle()

    def cancel(self, entry: Timed) -> None:
        if entry.next_at is None:
            return
        entry.next_at = None
        self._stale += 1
        self._settle()

    def _settle(self) -> None:
        """Drop stale items from the top (and all of them, when they are many); set the clock
        timer to the earliest live deadline."""
        heap = self._heap
        while heap and heap[0][1].next_at != heap[0][0]:
            heapq.heappop(heap)
            self._stale = max(0, self._stale - 1)
        if self._stale > SWEEP_AFTER and self._stale * 2 > len(heap):
            live = {id(entry): (at, entry) for at, entry in heap if entry.next_at == at}
            self._heap = heap = list(live.values())
            heapq.heapify(heap)
            self._stale = 0
        at = heap[0][0] if heap else None
        if at == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = None if at is None else self._clock.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle, self._at = None, None
        heap = self._heap
        try:
            now = self._clock.monotonic() + DUE_SLACK
            while heap and heap[0][0] <= now:
                at, entry = heapq.heappop(heap)
                if entry.next_at != at:
                    self._stale = max(0, self._stale - 1)
                    continue
                entry.next_at = None
                entry.due()
        finally:
            self._settle()  # an entry that raised leaves the rest due: the timer fires again
