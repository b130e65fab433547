"""The pure scheduling math: when to refresh, how long to back off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core import schedule
from broker.core.tokens import Token


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
