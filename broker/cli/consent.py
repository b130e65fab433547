"""`pc-token-broker consent PROFILE`: obtain the profile's refresh token with the device-code
flow (as `New-PartnerAccessToken -UseDeviceAuthentication` does), check the sign-in had MFA,
and write the token to the profile's `refresh_token_file`: mode 0600, atomically, never echoed.

The transport (an aiohttp session), the sleep and the monotonic clock are injected, so the
tests drive the whole flow against the sandbox without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import aiohttp

from broker.cli.out import shown
from broker.config.files import check_place, place_secret
from broker.config.settings import ProfileSettings
from broker.core.credentials.refresh_token_text import shows_mfa, usable_refresh_token
from broker.core.upstream.streams import load_json, read_limited

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN = 5  # seconds added to the interval at each slow_down (RFC 8628, 3.5)
MAX_ANSWER = 64 * 1024  # bytes read of an answer
MAX_EXPIRES_IN = 3600  # a longer code lifetime is not believed (Azure AD's is 900 s)
MAX_INTERVAL = 60
# An interval of 0 would poll Azure AD as fast as the network allows for the code's lifetime.
MIN_INTERVAL = 1
# Polls in a row that fail on Azure AD's side (5xx, 429, no answer, no JSON) before giving up:
# a passing outage must not waste the user's sign-in.
TRANSIENT_LIMIT = 5


class ConsentFailed(Exception):
    """One line for stderr; never a token."""


async def _post(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, Any]:
    try:
        # No redirect: a 307 would carry the device code to wherever it points.
        async with session.post(
            url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
        ) as r:
            body = await read_limited(r.content, MAX_ANSWER)  # read(n) may return less
            status = r.status
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise ConsentFailed(f"cannot reach {url}: {type(e).__name__}") from None
    if len(body) > MAX_ANSWER:
        raise ConsentFailed(f"{url} answered more than {MAX_ANSWER} bytes")
    try:
        data = load_json(body)
    except (ValueError, UnicodeDecodeError):
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


def _why(data: dict[str, Any]) -> str:
    codes = data.get("error_codes")
    code = codes[0] if isinstance(codes, list) and codes else None
    aadsts = f" (AADSTS{code})" if isinstance(code, int) and not isinstance(code, bool) else ""
    text = str(data.get("error_description") or "").split("\r\n")[0].split("\n")[0]
    return f"{shown(data.get('error'), 60)}{aadsts}: {shown(text, 300)}"


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
    user_code, uri = shown(user_code, 64), shown(uri, 512)  # printed to a terminal
    expires_in = _bounded_int(start, "expires_in", 900, MAX_EXPIRES_IN)
    interval = max(MIN_INTERVAL, _bounded_int(start, "interval", 5, MAX_INTERVAL))
    deadline = monotonic() + expires_in
    print(
        f"To sign in as the partner user of profile {profile.name} (with MFA), open {uri}\n"
        f"and enter the code {user_code}. It expires in {expires_in} s.",
        file=out,
        flush=True,
    )
    form = {"grant_type": GRANT, "client_id": profile.client_id, "device_code": str(device_code)}
    failed = 0  # polls in a row that failed on Azure AD's side
    while True:
        await sleep(interval)
        if monotonic() >= deadline:
            raise ConsentFailed("the code expired before the sign-in finished; run it again")
        try:
            status, answer = await _post(session, f"{base}/token", form)
        except ConsentFailed:
            failed += 1
            if failed >= TRANSIENT_LIMIT:
                raise
            continue
        if status >= 500 or status == 429:
            failed += 1
            if failed >= TRANSIENT_LIMIT:
                raise ConsentFailed(
                    f"Azure AD failed {failed} polls in a row (HTTP {status}): {_why(answer)}"
                )
            continue
        failed = 0
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
    try:  # before the user signs in: a sign-in whose token cannot be written is wasted
        check_place(profile.refresh_token_file)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise ConsentFailed(f"cannot write {profile.refresh_token_file}: {why}") from None
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
        await asyncio.to_thread(place_secret, profile.refresh_token_file, token + "\n")
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        raise ConsentFailed(
            f"cannot write {profile.refresh_token_file}: {why}; nothing was written"
        ) from None
    print(
        f"wrote the refresh token to {profile.refresh_token_file} (mode 0600); the sign-in "
        f"{'had MFA' if mfa else 'had NO MFA (--allow-no-mfa)'}",
        file=out,
    )
