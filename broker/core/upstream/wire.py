"""What travels to and from upstream: the ids of one refresh, an answer as read (bounded), and
Retry-After as seconds."""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass

from broker.core.tokens import schedule

MAX_BODY = 1 << 20  # bytes read from any upstream answer; a token answer is ~3 KiB


@dataclass(frozen=True, slots=True)
class RefreshIds:
    """Made once per refresh, kept across its retries: `ms-correlationid` and `ms-requestid`."""

    correlation_id: str
    request_id: str
    # The SHA-256 (hex) of the token this refresh replaces because a caller saw it refused
    # (`token_sha256_to_refresh`): the fleet's cache must not hand it back.
    refused: str | None = None

    @classmethod
    def new(cls, refused: str | None = None) -> RefreshIds:
        return cls(str(uuid.uuid4()), str(uuid.uuid4()), refused)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes


def retry_after_seconds(value: str | None, now_wall: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date, at most MAX_RETRY_AFTER (the broker
    never waits longer, whatever upstream asks); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value) if len(value) <= 9 else schedule.MAX_RETRY_AFTER
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now_wall
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return min(max(0.0, seconds), schedule.MAX_RETRY_AFTER)
