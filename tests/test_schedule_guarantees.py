"""The schedule's exact figures, pinned where the property tests in test_schedule.py only bound
them: the jitter's size, the refusal cool-down ladder, the failure memory, the 80 % fallback."""

from __future__ import annotations

import pytest

from broker.core import schedule
from broker.core.tokens import Token


def token(lifetime: float, received: float = 100.0) -> Token:
    return Token("t", "Bearer", received, received + lifetime, 1.8e9)


def at(t: Token, r: float, *, ahead=0.25, margin=60.0, min_remaining=30.0) -> float:
    return schedule.refresh_at(
        t,
        refresh_ahead=ahead,
        min_refresh_margin=margin,
        min_remaining=min_remaining,
        rand=lambda: r,
    )


@pytest.mark.parametrize(
    ("lifetime", "r", "before_expiry"),
    [
        (3600, 0.5, 900 + 15),  # jitter 5 % of 3600 = 180, capped at 30; half of it drawn
        (3600, 0.0, 900),  # no draw, no jitter
        (400, 0.5, 100 + 10),  # 5 % of 400 = 20 (under the cap); half of it drawn
        (400, 1.0, 100 + 20),
    ],
)
def test_jitter_is_a_drawn_share_of_five_percent_of_the_lifetime_at_most_30_s(
    lifetime: float, r: float, before_expiry: float
) -> None:
    t = token(lifetime)
    assert at(t, r) == pytest.approx(t.expires_mono - before_expiry)


def test_short_lifetime_refresh_moves_to_80_percent_of_the_servable_window() -> None:
    """100 s token, 30 s min_remaining: margin 50 s would be at 50 s; the servable window is
    70 s, so the refresh is at the earlier of 50 s and 56 s after receipt."""
    t = token(100)
    assert at(t, 0.0) == pytest.approx(t.received_mono + 50)
    squeezed = token(100)
    assert at(squeezed, 0.0, margin=0, ahead=0, min_remaining=60) == pytest.approx(
        squeezed.received_mono + 0.8 * 40
    )


def test_refresh_never_lands_before_receipt() -> None:
    """A token already inside min_remaining at receipt: the refresh is due at once, not in
    the past."""
    t = token(20)
    assert at(t, 0.0, min_remaining=30) == t.received_mono


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 15.0), (1, 15.0), (2, 30.0), (3, 60.0), (4, 60.0), (40, 60.0), (10_000, 60.0)],
)
def test_refusal_cool_down_doubles_from_15_s_to_the_60_s_cap(
    failures: int, expected: float
) -> None:
    assert (
        schedule.retry_delay(failures, retryable=False, retry_after=None, rand=lambda: 0.0)
        == expected
    )


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 60.0), (5000, 60.0)]
)
def test_retryable_backoff_draws_below_a_doubling_ceiling(failures: int, ceiling: float) -> None:
    """Full jitter: the draw times min(60, 2**(n-1)); the failure memory (2 s) is the floor."""
    got = schedule.retry_delay(failures, retryable=True, retry_after=None, rand=lambda: 0.5)
    assert got == max(0.5 * ceiling, schedule.FAILURE_MEMORY)
    top = schedule.retry_delay(failures, retryable=True, retry_after=None, rand=lambda: 1.0)
    assert top == max(ceiling, schedule.FAILURE_MEMORY)


def test_a_failure_is_remembered_at_least_two_seconds_whatever_the_draw() -> None:
    assert schedule.retry_delay(1, retryable=True, retry_after=None, rand=lambda: 0.0) == 2.0
    assert schedule.retry_delay(1, retryable=True, retry_after=0.5, rand=lambda: 0.0) == 2.0


def test_retry_after_is_honoured_up_to_ten_minutes_and_never_shortens_a_cool_down() -> None:
    assert schedule.retry_delay(1, retryable=True, retry_after=599, rand=lambda: 0.0) == 599
    assert schedule.retry_delay(1, retryable=True, retry_after=601, rand=lambda: 0.0) == 600
    assert schedule.retry_delay(3, retryable=False, retry_after=5, rand=lambda: 0.0) == 60
