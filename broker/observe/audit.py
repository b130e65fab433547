"""One audit line per token handed out: when, which profile and kind, to whom, hit or miss, and
the correlation id of the refresh that produced it. Never the token.

Kept cheap for the hot path: a prebuilt JSON line (every field is safe by construction:
validated profile names, fixed kinds, numbers, and a correlation id made by the broker), and
writes batched and flushed every 200 ms instead of one system call per request.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

FLUSH_AFTER = 0.2  # s: an audit line reaches the log within this long
FLUSH_SIZE = 32 * 1024  # bytes: or as soon as this much is waiting
_REST_MAX = 1024  # line tails remembered (profile x kind x caller x hit x refresh)
_MILLIS = tuple(".%03d" % ms for ms in range(1000))  # noqa: UP031 (a timestamp's last digits)


_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def safe_id(value: str | None) -> str:
    """A caller-chosen id (the mirror's ms-correlationid) fit for the prebuilt line, else ""."""
    return value if value and _SAFE_ID.fullmatch(value) else ""


class Audit:
    """`console`: a console logger (log_format = "console"); each line is then written at once,
    through it, in the log's format and in order with the other log lines. Otherwise the lines
    are JSON, batched (at most FLUSH_AFTER late, each with its own timestamp)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        console: Any = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self._wall = wall  # seconds since the epoch (tests pass their own)
        self._console = console
        self._stream = stream or sys.stderr
        self._pending: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._ms = -1
        self._start = ""
        self._rest: dict[tuple, str] = {}

    def served(
        self,
        route: str,
        profile: str,
        kind: str,
        caller: str,
        hit: bool,
        correlation_id: str | None,
    ) -> None:
        if not self.enabled:
            return
        if self._console is not None:
            self._console.info(
                "token_served",
                route=route,
                profile=profile,
                kind=kind,
                caller=caller,
                cache="hit" if hit else "miss",
                correlation_id=correlation_id or "",
            )
            return
        ms = int(self._wall() * 1000)
        if ms != self._ms:  # the line's start, formatted once a millisecond, not per request
            self._ms = ms
            second = ms // 1000
            if second != self._second:  # the date: once a second
                self._second = second
                self._stamp = '{"event": "token_served", "timestamp": "' + time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.gmtime(second)
                )
            self._start = self._stamp + _MILLIS[ms % 1000]
        key = (route, profile, kind, caller, hit, correlation_id)
        rest = self._rest.get(key)
        if rest is None:  # the same few callers get the same few tokens: build each tail once
            if len(self._rest) >= _REST_MAX:
                self._rest.clear()
            rest = self._rest[key] = (
                f'Z", "route": "{route}", "profile": "{profile}", "kind": "{kind}", '
                f'"caller": "{caller}", "cache": "{"hit" if hit else "miss"}", '
                f'"correlation_id": "{correlation_id or ""}"}}\n'
            )
        line = self._start + rest
        self._pending.append(line)  # `_queue`, inlined: this runs once per token served
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._arm()

    def served_tenant(
        self,
        route: str,
        profile: str,
        tenant: str,
        scope: str,
        caller: str,
        hit: bool,
        correlation_id: str | None,
    ) -> None:
        """A customer-tenant token handed out: the line also names the tenant and the scope."""
        if not self.enabled:
            return
        if self._console is not None:
            self._console.info(
                "token_served",
                route=route,
                profile=profile,
                kind="aad",
                tenant=tenant,
                scope=scope,
                caller=caller,
                cache="hit" if hit else "miss",
                correlation_id=correlation_id or "",
            )
            return
        now = self._wall()
        line = json.dumps(
            {
                "event": "token_served",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                + ".%03dZ" % (int(now * 1000) % 1000),  # noqa: UP031
                "route": route,
                "profile": profile,
                "kind": "aad",
                "tenant": tenant,
                "scope": scope,
                "caller": caller,
                "cache": "hit" if hit else "miss",
                "correlation_id": correlation_id or "",
            }
        )
        self._queue(line + "\n")

    def _queue(self, line: str) -> None:
        """Batch a complete line: written within FLUSH_AFTER, or at once past FLUSH_SIZE."""
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _arm(self) -> None:
        """Flush FLUSH_AFTER from now."""
        try:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
        except RuntimeError:  # no loop (a synchronous caller): write now
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._stream.write("".join(self._pending))
            self._stream.flush()
            self._pending.clear()
            self._size = 0
