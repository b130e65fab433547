"""The device authorization grant (RFC 8628) as Azure AD serves it: `POST
/{tenant}/oauth2/v2.0/devicecode` hands out a device code and a user code; the client polls
the token endpoint with `grant_type=urn:ietf:params:oauth:grant-type:device_code` and gets
`authorization_pending` until the user signs in, `slow_down` when it polls faster than
`interval`, `expired_token` once `expires_in` has passed, `authorization_declined` (Azure
AD's word; RFC 8628's is `access_denied`) when the user said no. Each error body carries
Azure AD's fields (`error_codes`, `trace_id`...).

Tests play the user: `DeviceFlows.approve(user_code, mfa=...)` (how the user signed in, in
the tokens' `amr`), `decline(user_code, error=...)`, `slow_down(user_code, times)`. Pure state
and answers; aad.py routes the requests here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
EXPIRES_IN = 900  # Azure AD's: 15 minutes to sign in
INTERVAL = 5  # seconds between polls
VERIFICATION_URI = "https://microsoft.com/devicelogin"
SELF_PAGE = "/_sandbox/devicelogin"  # when the sandbox approves codes itself (--user)
SELF_PAGE_TEXT = (
    "pc-token-broker sandbox: device codes are approved by the sandbox itself (--user);\n"
    "nothing to do here: pc-token-broker consent finishes on its own.\n"
)

# error -> (AADSTS code, description)
ERRORS: dict[str, tuple[int, str]] = {
    "authorization_pending": (70016, "OAuth 2.0 device flow error. Authorization is pending. "
                              "Continue polling."),
    "slow_down": (70016, "OAuth 2.0 device flow error. Polling too fast: slow down."),
    "expired_token": (70019, "Verification code expired."),
    "authorization_declined": (70000, "The end user denied the authorization request."),
    "access_denied": (70000, "The end user denied the authorization request."),
    "bad_verification_code": (70018, "Invalid verification code."),
}  # fmt: skip


@dataclass
class DeviceFlow:
    device_code: str
    user_code: str
    client_id: str
    tenant: str
    scope: str
    expires_at: float  # the sandbox's wall clock
    outcome: str = "authorization_pending"  # "approved", or an error of ERRORS
    mfa: bool = True  # how the user signed in, once approved
    slow_downs: int = 0  # answer this many polls with slow_down
    polls: int = 0


class DeviceFlows:
    """The device codes handed out, by device code and by user code."""

    def __init__(self) -> None:
        self.flows: dict[str, DeviceFlow] = {}
        self._by_user: dict[str, DeviceFlow] = {}
        self.interval = INTERVAL  # what /devicecode tells clients (a test may make it 0)
        # Set: every new flow is answered so at once, as if the user had already signed in
        # ("approved" with auto_mfa, or an error), for tests of the command line as a whole.
        self.auto: str | None = None
        self.auto_mfa = True

    def start(self, client_id: str, tenant: str, scope: str, now: float) -> DeviceFlow:
        # Expired codes are forgotten (Azure AD answers bad_verification_code for them then),
        # so a long-running `pc-token-broker sandbox` asked for codes again and again does not
        # grow without bound.
        for old in [f for f in self.flows.values() if now >= f.expires_at + EXPIRES_IN]:
            del self.flows[old.device_code]
            self._by_user.pop(old.user_code, None)
        flow = DeviceFlow(
            device_code=secrets.token_urlsafe(32),
            user_code="".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9)),
            client_id=client_id,
            tenant=tenant,
            scope=scope,
            expires_at=now + EXPIRES_IN,
        )
        if self.auto is not None:
            flow.outcome, flow.mfa = self.auto, self.auto_mfa
        self.flows[flow.device_code] = flow
        self._by_user[flow.user_code] = flow
        return flow

    def answer(self, flow: DeviceFlow, origin: str) -> dict[str, Any]:
        """The /devicecode answer. Approved at once (`auto`): the page is the sandbox's own
        (`origin` + SELF_PAGE), which says so, never the real Azure AD's."""
        if self.auto is not None:
            uri = origin + SELF_PAGE
            message = (
                f"The sandbox approves code {flow.user_code} by itself ({self.auto}): nothing "
                f"to open or enter (not microsoft.com); {uri} says so."
            )
        else:
            uri = VERIFICATION_URI
            message = (
                f"To sign in, use a web browser to open the page {uri} and enter the code "
                f"{flow.user_code} to authenticate."
            )
        return {
            "device_code": flow.device_code,
            "user_code": flow.user_code,
            "verification_uri": uri,
            "expires_in": EXPIRES_IN,
            "interval": self.interval,
            "message": message,
        }

    # -- the user, played by tests ----------------------------------------------------------

    def approve(self, user_code: str, *, mfa: bool = True) -> None:
        flow = self._by_user[user_code]
        flow.outcome, flow.mfa = "approved", mfa

    def decline(self, user_code: str, *, error: str = "authorization_declined") -> None:
        assert error in ("authorization_declined", "access_denied")
        self._by_user[user_code].outcome = error

    def slow_down(self, user_code: str, times: int = 1) -> None:
        self._by_user[user_code].slow_downs += times

    @property
    def latest(self) -> DeviceFlow | None:
        return next(reversed(self.flows.values()), None)

    # -- the poll ---------------------------------------------------------------------------

    def poll(self, device_code: str, client_id: str, now: float) -> DeviceFlow | str:
        """The approved flow (redeemed once: the code is then spent), or the error to answer."""
        flow = self.flows.get(device_code)
        if flow is None or flow.client_id != client_id:
            return "bad_verification_code"
        flow.polls += 1
        if now >= flow.expires_at:
            return "expired_token"
        if flow.slow_downs > 0:
            flow.slow_downs -= 1
            return "slow_down"
        if flow.outcome == "approved":
            del self.flows[device_code]
            self._by_user.pop(flow.user_code, None)
            return flow
        return flow.outcome
