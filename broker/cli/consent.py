"""`pc-token-broker consent PROFILE`: obtain the profile's refresh token with the device-code
flow (as `New-PartnerAccessToken -UseDeviceAuthentication` does), check the sign-in had MFA,
and write the token to the profile's `refresh_token_file`: mode 0600, atomically, never echoed.

The transport (an aiohttp session), the sleep and the monotonic clock are injected, so the
tests drive the whole flow against the sandbox without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp

from broker.config.settings import ProfileSettings
from broker.core.credentials.refresh_token import shows_mfa, usable_refresh_token

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN = 5  # seconds added to the interval at each slow_down (RFC 8628, 3.5)
MAX_ANSWER = 64 * 1024  # bytes read of an answer
MAX_EXPIRES_IN = 3600  # a longer code lifetime is not believed (Azure AD's is 900 s)
MAX_INTERVAL = 60


class ConsentFailed(Exception):
    """One line for stderr; never a token."""


async def _post(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, Any]:
    try:
        async with session.post(url, data=form, headers={"Accept": "application/json"}) as r:
            body = await r.content.read(MAX_ANSWER + 1)
            status = r.status
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise ConsentFailed(f"cannot reach {url}: {type(e).__name__}") from None
    if len(body) > MAX_ANSWER:
        raise ConsentFailed(f"{url} answered more than {MAX_ANSWER} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConsentFailed(f"{url} answered HTTP {status} without JSON") from None
    if not isinstance(data, dict):
        raise ConsentFailed(f"{url} answered HTTP {status} without a JSON object")
    return status, data


def _bounded_int(data: dict[str, Any], key: str, default: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value[:6])
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ConsentFailed(f"the device-code answer's {key} is not 0 to {high}")
    return value


def _shown(value: Any, limit: int) -> str:
    """Upstream text as it may reach a terminal: printable characters only, bounded."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def _why(data: dict[str, Any]) -> str:
    codes = data.get("error_codes")
    code = codes[0] if isinstance(codes, list) and codes else None
    shown = f" (AADSTS{code})" if isinstance(code, int) and not isinstance(code, bool) else ""
    text = str(data.get("error_description") or "").split("\r\n")[0].split("\n")[0]
    return f"{_shown(data.get('error'), 60)}{shown}: {_shown(text, 300)}"


async def obtain(
    profile: ProfileSettings,
    session: aiohttp.ClientSession,
    out: TextIO,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float],
    allow_no_mfa: bool = False,
) -> tuple[str, bool]:
    """The refresh token of the user who signs in with the device code, and whether the
    sign-in had MFA; ConsentFailed if the
    flow fails, expires, is declined, or the sign-in had no MFA (unless `allow_no_mfa`)."""
    base = f"{profile.authority.rstrip('/')}/{profile.tenant_id}/oauth2/v2.0"
    scope = " ".join(dict.fromkeys([*profile.scope.split(), "offline_access", "openid"]))
    status, start = await _post(
        session, f"{base}/devicecode", {"client_id": profile.client_id, "scope": scope}
    )
    if status != 200:
        raise ConsentFailed(f"Azure AD refused the device code: {_why(start)}")
    device_code, user_code = start.get("device_code"), start.get("user_code")
    uri = start.get("verification_uri")
    if not all(isinstance(v, str) and 0 < len(v) <= 4096 for v in (device_code, user_code, uri)):
        raise ConsentFailed(
            "the device-code answer lacks device_code, user_code or verification_uri"
        )
    user_code, uri = _shown(user_code, 64), _shown(uri, 512)  # printed to a terminal
    expires_in = _bounded_int(start, "expires_in", 900, MAX_EXPIRES_IN)
    interval = _bounded_int(start, "interval", 5, MAX_INTERVAL)
    deadline = monotonic() + expires_in
    print(
        f"To sign in as the partner user of profile {profile.name} (with MFA), open {uri}\n"
        f"and enter the code {user_code}. It expires in {expires_in} s.",
        file=out,
        flush=True,
    )
    form = {"grant_type": GRANT, "client_id": profile.client_id, "device_code": str(device_code)}
    while True:
        await sleep(interval)
        if monotonic() >= deadline:
            raise ConsentFailed("the code expired before the sign-in finished; run it again")
        status, answer = await _post(session, f"{base}/token", form)
        if status == 200:
            break
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval = min(interval + SLOW_DOWN, MAX_INTERVAL)
            continue
        if error == "expired_token":
            raise ConsentFailed("the code expired before the sign-in finished; run it again")
        if error in ("authorization_declined", "access_denied"):
            raise ConsentFailed("the sign-in was declined; nothing was written")
        raise ConsentFailed(f"Azure AD refused the sign-in: {_why(answer)}")
    token = answer.get("refresh_token")
    if not usable_refresh_token(token):
        raise ConsentFailed(
            "Azure AD answered without a usable refresh token (is offline_access allowed?)"
        )
    mfa = shows_mfa(answer.get("access_token")) or shows_mfa(answer.get("id_token"))
    if not mfa and not allow_no_mfa:
        raise ConsentFailed(
            "the sign-in had no MFA (amr): Partner Center refuses app+user calls without it "
            "(900421); sign in with MFA, or --allow-no-mfa for tenants that do not need it; "
            "nothing was written"
        )
    assert isinstance(token, str)
    return token, bool(mfa)


def write_refresh_token(path: str, token: str) -> None:
    """Replace `path` with `token`: a new file in the same directory, mode 0600 from its first
    byte (and the old file's owner, where permitted), fsynced, renamed over the old one, the
    directory fsynced: a reader sees the old token or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pc-token-broker-", dir=directory)  # 0600
    try:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            old = os.stat(path)
            os.fchown(fd, old.st_uid, old.st_gid)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(token.encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def consent(
    profile: ProfileSettings,
    out: TextIO,
    *,
    session: aiohttp.ClientSession | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] | None = None,
    allow_no_mfa: bool = False,
) -> None:
    """The whole command: obtain, then write. Raises ConsentFailed."""
    assert profile.refresh_token_file is not None
    loop = asyncio.get_running_loop()
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        token, mfa = await obtain(
            profile,
            session,
            out,
            sleep=sleep,
            monotonic=monotonic or loop.time,
            allow_no_mfa=allow_no_mfa,
        )
    finally:
        if own:
            await session.close()
    try:
        await asyncio.to_thread(write_refresh_token, profile.refresh_token_file, token)
    except OSError as e:
        raise ConsentFailed(
            f"cannot write {profile.refresh_token_file}: {e.strerror}; nothing was written"
        ) from None
    print(
        f"wrote the refresh token to {profile.refresh_token_file} (mode 0600); the sign-in "
        f"{'had MFA' if mfa else 'had NO MFA (--allow-no-mfa)'}",
        file=out,
    )
