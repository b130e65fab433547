"""`pc-token-broker sandbox`: run the fake upstream alone, for users' own integration tests."""

from __future__ import annotations

import asyncio
import secrets
import signal

from broker.sandbox import Sandbox
from broker.sandbox.roles import Roles, apply

TENANT = "sandbox.onmicrosoft.com"
CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"


async def run_sandbox(host: str, port: int, roles: Roles | None = None) -> int:
    sandbox = Sandbox(host=host, port=port)
    # A throwaway credential for a fake Azure AD: printing it is the point.
    secret = f"sandbox-{secrets.token_urlsafe(16)}"
    sandbox.state.register(TENANT, CLIENT_ID, client_secret=secret)
    try:
        await sandbox.start()
    except OSError as e:
        print(f"pc-token-broker sandbox: cannot listen on {host}:{port}: {e.strerror}")
        return 1
    print(
        f"""sandbox listening on {sandbox.url}
  Azure AD token endpoint:  {sandbox.url}/{TENANT}/oauth2/v2.0/token
  Partner Center:           {sandbox.url}/generatetoken and {sandbox.url}/v3/generatetoken
  knobs:                    GET {sandbox.url}/_sandbox/state, POST /_sandbox/faults,
                            /_sandbox/clear, /_sandbox/settings, /_sandbox/apps

a broker profile for it (sandbox credential, not a real secret):
  [defaults]
  authority = "{sandbox.url}"
  generatetoken_url = "{sandbox.url}/v3/generatetoken"
  [profiles.default]
  tenant_id = "{TENANT}"
  client_id = "{CLIENT_ID}"
  client_secret_env = "SANDBOX_SECRET"     # export SANDBOX_SECRET={secret}
""",
        flush=True,
    )
    if roles:  # customer-tenant operators' roles (issue #26)
        print(apply(roles, sandbox.state, sandbox.url, TENANT, CLIENT_ID), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sandbox.stop()
    return 0
