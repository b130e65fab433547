"""Closing the running broker: every part closed, whatever one part raises. Each failure is
logged (`close_failed`, naming the part and its profile) and the rest still close, so every
profile's held-back refresh token reaches its file and Redis and the upstream session close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from broker.core.cache.shared import SharedCache
from broker.core.runtime import Runtime
from broker.observe.audit import Audit


async def close(
    runtime: Runtime,
    *,
    audit: Audit,
    shared: SharedCache,
    session: aiohttp.ClientSession | None,
    log: Any,
) -> None:
    """Close the audit log, then each profile's parts (together), then the shared cache, the
    mirror and `session` (the upstream session, when the broker opened it)."""
    try:
        audit.flush()
    except Exception as e:
        _failed(log, "audit", e)
    parts: list[tuple[str, str | None, Awaitable[Any]]] = []
    for name, profile in runtime.profiles.items():
        # A profile's parts one by one: an entry that raises must not keep its
        # credential's held-back refresh token from reaching the file.
        parts += [(f"entry {e.kind}", name, e.close()) for e in profile.all_entries()]
        if profile.keep_alive is not None:
            parts.append(("keep-alive", name, profile.keep_alive.close()))
        if profile.tenants is not None:
            parts.append(("customer tenants", name, profile.tenants.close()))
        parts.append(("credential", name, profile.credential.close()))
    outcomes = await asyncio.gather(*(p for _, _, p in parts), return_exceptions=True)
    for (part, profile_name, _), outcome in zip(parts, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            _failed(log, part, outcome, profile_name)
    last: list[tuple[str, Callable[[], Awaitable[Any]]]] = [("shared cache", shared.close)]
    if runtime.mirror is not None:
        last.append(("mirror", runtime.mirror.close))
    if session is not None:
        last.append(("upstream session", session.close))
    for part, closing in last:
        try:
            await closing()
        except Exception as e:
            _failed(log, part, e)


def _failed(log: Any, part: str, error: BaseException, profile: str | None = None) -> None:
    log.error(
        "close_failed",
        part=part,
        profile=profile,
        error=f"{type(error).__name__}: {error}",
        note="the other parts were closed all the same",
    )
