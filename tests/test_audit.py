"""The audit line: one JSON line per token handed out, its timestamp the moment it was handed
out to the millisecond (the line's start is reused within a millisecond and the date within a
second: never across them), batched but never lost or reordered."""

from __future__ import annotations

import io
import json

from broker.observe.audit import Audit


class Wall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_carries_its_own_millisecond_across_millisecond_and_second_edges():
    stream, wall = io.StringIO(), Wall(0.0)
    audit = Audit(stream, wall=wall)
    moments = [
        (1_800_000_000.9991, "2027-01-15T08:00:00.999Z"),
        (1_800_000_000.9996, "2027-01-15T08:00:00.999Z"),  # same millisecond: same start
        (1_800_000_001.0004, "2027-01-15T08:00:01.000Z"),  # next second
        (1_800_000_001.0014, "2027-01-15T08:00:01.001Z"),  # next millisecond, same second
        (1_800_000_061.5, "2027-01-15T08:01:01.500Z"),
        (1_800_000_000.25, "2027-01-15T08:00:00.250Z"),  # a clock stepped back is followed
    ]
    for i, (now, _) in enumerate(moments):
        wall.now = now
        audit.served("v1", f"p{i}", "partner", "uid 1000", i % 2 == 0, f"c-{i}")
    audit.flush()
    got = lines(stream)
    assert [line["timestamp"] for line in got] == [stamp for _, stamp in moments]
    assert [line["profile"] for line in got] == [f"p{i}" for i in range(len(moments))]
    assert got[0] == {
        "event": "token_served",
        "timestamp": "2027-01-15T08:00:00.999Z",
        "route": "v1",
        "profile": "p0",
        "kind": "partner",
        "caller": "uid 1000",
        "cache": "hit",
        "correlation_id": "c-0",
    }
    assert got[1]["cache"] == "miss"


def test_tenant_lines_share_the_clock_and_the_order():
    stream = io.StringIO()
    audit = Audit(stream, wall=Wall(1_800_000_000.0425))
    audit.served("v1", "default", "partner", "uid 1", True, None)
    audit.served_tenant("msi", "csp", "contoso.com", "https://graph/.default", "uid 2", False, "x")
    audit.flush()
    first, second = lines(stream)
    assert first["timestamp"] == second["timestamp"] == "2027-01-15T08:00:00.042Z"
    assert first["correlation_id"] == ""
    assert (second["tenant"], second["scope"], second["cache"]) == (
        "contoso.com",
        "https://graph/.default",
        "miss",
    )


def test_no_line_when_audit_is_off():
    stream = io.StringIO()
    audit = Audit(stream, enabled=False, wall=Wall(1_800_000_000.0))
    audit.served("v1", "default", "partner", "uid 1", True, "c")
    audit.flush()
    assert stream.getvalue() == ""
