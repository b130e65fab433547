"""The pure scheduling math: when to refresh, how long to back off. Properties first, then the
exact figures where a property only bounds them: the jitter's size, the refusal cool-down
ladder, the failure memory, the 80 % fallback.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.tokens import Token, schedule


def token(lifetime: float, received: float = 100.0) -> Token:
    return Token("t", "Bearer", received, received + lifetime, 1.8e9)


@given(
    lifetime=st.floats(min_value=1, max_value=86400),
    refresh_ahead=st.floats(min_value=0, max_value=0.5),
    margin=st.floats(min_value=0, max_value=86400),
    min_remaining_fraction=st.floats(min_value=0, max_value=0.99),
    r=st.floats(min_value=0, max_value=0.999999),
)
def test_refresh_always_lands_inside_the_servable_window(
    lifetime: float, refresh_ahead: float, margin: float, min_remaining_fraction: float, r: float
) -> None:
    """Whatever the settings and jitter, the refresh falls after receipt and before the token
    stops being servable, so steady-state callers never wait."""
    t = token(lifetime)
    min_remaining = min_remaining_fraction * lifetime
    at = schedule.refresh_at(
        t,
        refresh_ahead=refresh_ahead,
        min_refresh_margin=margin,
        min_remaining=min_remaining,
        rand=lambda: r,
    )
    assert t.received_mono <= at < t.expires_mono - min_remaining


def test_refresh_margin_follows_the_contract() -> None:
    """expiry - max(min_refresh_margin, refresh_ahead x lifetime), capped at half the lifetime."""
    assert schedule.refresh_margin(3600, 0.25, 60) == 900
    assert schedule.refresh_margin(120, 0.25, 60) == 60
    assert schedule.refresh_margin(100, 0.25, 60) == 50  # capped at half
    t = token(3600)
    at = schedule.refresh_at(
        t, refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, rand=lambda: 0.0
    )
    assert at == t.expires_mono - 900
    jittered = schedule.refresh_at(
        t, refresh_ahead=0.25, min_refresh_margin=60, min_remaining=30, rand=lambda: 0.999
    )
    assert at - 30 < jittered < at  # jitter only ever moves it earlier, by at most 30 s


@given(failures=st.integers(min_value=1, max_value=1000), r=st.floats(min_value=0, max_value=0.999))
def test_retry_delay_is_bounded(failures: int, r: float) -> None:
    """Backoff stays between the failure memory and the cap, for any number of failures."""
    delay = schedule.retry_delay(failures, retryable=True, retry_after=None, rand=lambda: r)
    assert schedule.FAILURE_MEMORY <= delay <= schedule.BACKOFF_CAP


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    """The ceiling doubles per failure from about 1 s up to 60 s."""
    ceilings = [
        schedule.retry_delay(n, retryable=True, retry_after=None, rand=lambda: 0.999999)
        for n in range(1, 9)
    ]
    assert ceilings[2:] == sorted(ceilings[2:])
    assert round(ceilings[3]) == 8 and round(ceilings[5]) == 32 and round(ceilings[7]) == 60


def test_retry_after_is_honoured_but_capped() -> None:
    """A server's Retry-After wins over a shorter backoff; an absurd one is capped."""
    assert schedule.retry_delay(1, retryable=True, retry_after=30, rand=lambda: 0.1) == 30
    assert schedule.retry_delay(1, retryable=True, retry_after=86400, rand=lambda: 0.1) == 600


def test_refusals_cool_down_longer() -> None:
    """A refused credential is not retried for REFUSAL_COOLDOWN, doubling up to the cap."""
    first = schedule.retry_delay(1, retryable=False, retry_after=None, rand=lambda: 0.0)
    assert first == schedule.REFUSAL_COOLDOWN
    assert schedule.retry_delay(5, retryable=False, retry_after=None, rand=lambda: 0.0) == 60


# -- the exact figures: jitter, the cool-down ladder, failure memory, the 80 % fallback --------


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
