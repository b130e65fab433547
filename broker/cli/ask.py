"""Asking the running daemon, for the commands that do (remote.py, doctor_run.py): one request,
its JSON, and a failure as an exit code with one line on stderr."""

from __future__ import annotations

import argparse
import os
import urllib.parse
from typing import Any

from broker.cli.out import fail


class Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


TIMEOUT = 30.0  # seconds a client command waits for the daemon: a cold fetch waits on upstream
# for at most upstream_timeout (10 s by default), so this leaves room; --timeout or the variable
# below changes it (healthcheck: 5 s unless asked, as a probe must answer before its own timeout)
ENV_TIMEOUT = "PC_TOKEN_BROKER_TIMEOUT"


def timeout_of(args: argparse.Namespace, default: float = TIMEOUT) -> float:
    """--timeout, else $PC_TOKEN_BROKER_TIMEOUT, else `default`: seconds, over 0, at most 3600."""
    given, origin = getattr(args, "timeout", None), "--timeout"
    if given is None and os.environ.get(ENV_TIMEOUT):
        given, origin = os.environ[ENV_TIMEOUT], f"${ENV_TIMEOUT}"
    if given is None:
        return default
    try:
        seconds = float(given)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # NaN fails too
        raise Failed(2, f"{origin}: a number of seconds over 0 and at most 3600, not {given!r}")
    return seconds


def ask(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    from broker.cli.client import DaemonUnreachable, TargetError, request, target_from
    from broker.config.paths import resolve_path  # the schema only if [server] must be read

    explicit = bool(args.config or os.environ.get("PC_TOKEN_BROKER_CONFIG"))
    kwargs["timeout"] = timeout_of(args, kwargs.get("timeout", TIMEOUT))
    try:
        target = target_from(args.url, args.socket, resolve_path(args.config), explicit=explicit)
        return request(target, method, path, **kwargs)
    except TargetError as e:
        raise Failed(2, str(e)) from None
    except DaemonUnreachable as e:
        raise Failed(3, str(e)) from None


def json_of(status: int, body: bytes) -> Any:
    """The JSON of a 200, else Failed with the broker's error as one line."""
    from broker.cli.client import error_message

    if status != 200:
        raise Failed(1, error_message(status, body))
    from broker.core.upstream.streams import load_json

    try:  # NaN and Infinity refused: `--json` would print them, and they are not JSON
        return load_json(body, constants=False)
    except ValueError:
        raise Failed(1, f"HTTP {status}: the answer is not JSON (is this the broker?)") from None


def client(run):
    """Turns Failed into its exit code and one line on stderr."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except Failed as e:
            return fail(str(e), e.code)

    wrapper.__name__ = run.__name__
    return wrapper


def tenant_pages(args: argparse.Namespace, profile: str, limit: int) -> list[dict[str, Any]]:
    """The pages of `/v1/tenants/{profile}` until `limit` rows or the last page. A page that
    brings no row ends the listing, a cursor already followed is refused: a broken or hostile
    daemon could otherwise keep the command paging forever."""
    quoted = urllib.parse.quote(profile, safe="")
    pages: list[dict[str, Any]] = []
    count, after, followed = 0, None, set()
    while count < limit:
        query = {"limit": str(min(1000, max(1, limit - count)))}
        if after:
            query["after"] = after
        page = json_of(*ask(args, "GET", f"/v1/tenants/{quoted}?{urllib.parse.urlencode(query)}"))
        if not isinstance(page, dict) or not isinstance(page.get("tenants"), list):
            raise Failed(1, "the answer has no tenants list (is this the broker?)")
        pages.append(page)
        count += len(page["tenants"])
        after = page.get("next")
        if not after or not page["tenants"]:
            break
        if not isinstance(after, str) or after in followed:
            raise Failed(1, "the tenants listing does not end (is this the broker?)")
        followed.add(after)
    return pages
