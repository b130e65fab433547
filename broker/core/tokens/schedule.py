"""When to refresh and when to retry: pure functions, with the random source passed in."""

from __future__ import annotations

from collections.abc import Callable

from broker.core.tokens import Token

Random = Callable[[], float]  # uniform in [0, 1)

# Jitter spreads the refreshes of many profiles (or many brokers on one tenant) so they do not
# hit Azure AD in the same second: up to 5 % of the lifetime, never more than 30 s.
JITTER_FRACTION = 0.05
JITTER_CAP = 30.0

# Backoff after a retryable failure: full jitter (uniform in [0, min(cap, base * 2**n))), the
# scheme that spreads a crowd of retries best. About 1 s to start, at most 60 s.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0

# A failure is remembered at least this long whatever the jitter drew, so that a crowd of
# callers during an outage costs a handful of upstream calls, not one each.
FAILURE_MEMORY = 2.0

# A refusal (400/401/403/404) means the credential is wrong; it will not fix itself in a second.
# Cool down for this long (then double, up to the backoff cap) before trying again.
REFUSAL_COOLDOWN = 15.0

# The shortest time between two fetches of one entry, whatever the token says: a source that
# keeps handing back a nearly expired token (a static file nobody renews) must not spin.
MIN_REFRESH_INTERVAL = 1.0

# The longest an upstream's Retry-After can park an entry: a hostile or buggy one must not
# park us for a day. Callers are told the delay actually used, never more than this.
MAX_RETRY_AFTER = 600.0


def refresh_margin(lifetime: float, refresh_ahead: float, min_refresh_margin: float) -> float:
    """Seconds before expiry to refresh: max(min margin, fraction of lifetime), at most half."""
    return min(max(min_refresh_margin, refresh_ahead * lifetime), lifetime / 2)


def refresh_at(
    token: Token,
    *,
    refresh_ahead: float,
    min_refresh_margin: float,
    min_remaining: float,
    rand: Random,
) -> float:
    """Monotonic time at which to replace `token`.

    Always after receipt and before the token stops being servable (`min_remaining` left): a
    refresh that came later would leave callers waiting. When `min_remaining` eats most of a
    short lifetime, the refresh moves to 80 % of the servable window.
    """
    lifetime = token.lifetime
    at = token.expires_mono - refresh_margin(lifetime, refresh_ahead, min_refresh_margin)
    at -= rand() * min(JITTER_FRACTION * lifetime, JITTER_CAP)
    servable_until = token.expires_mono - min_remaining
    latest = token.received_mono + 0.8 * (servable_until - token.received_mono)
    return max(token.received_mono, min(at, latest))


def retry_delay(
    failures: int, *, retryable: bool, retry_after: float | None, rand: Random
) -> float:
    """Seconds to wait after the `failures`-th failure in a row before the next attempt."""
    exponent = min(max(failures - 1, 0), 16)
    if retryable:
        delay = rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2**exponent)
    else:
        delay = min(BACKOFF_CAP, REFUSAL_COOLDOWN * 2**exponent)
    if retry_after is not None:
        # Honour the server, but a hostile or buggy Retry-After must not park us for a day.
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return float(max(delay, FAILURE_MEMORY))
