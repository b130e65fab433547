"""`pc-token-broker sandbox`: run the fake upstream alone, for users' own integration tests.

It prints a broker config for itself, complete and valid TOML as printed (the human lines are
comments), so `pc-token-broker sandbox > sandbox.toml` then `serve --config sandbox.toml` works:
the app's secret, a refresh token for the customer-tenant profile and the identity header live
in a private temporary folder, removed when the sandbox stops. `--detach` returns once it
listens and the config is written, the sandbox going on in the background."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from broker.sandbox import Sandbox
from broker.sandbox.roles import CUSTOMER_SCOPES, Roles, apply, tenant_arg, toml_list

TENANT = "sandbox.onmicrosoft.com"
CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"
CUSTOMERS_CLIENT_ID = "00000000-0000-4000-8000-00000000cafe"  # the multi-tenant (GDAP) app


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return str(path)


def _config(url: str, folder: Path, secret: str, refresh: str | None, tenants, port: int) -> str:
    secret_file = str(folder / "client-secret")
    text = f"""\
# pc-token-broker sandbox listening on {url} (pid {os.getpid()}; stop it: kill {os.getpid()})
#   Azure AD token endpoint:  {url}/{TENANT}/oauth2/v2.0/token
#   Partner Center:           {url}/generatetoken and {url}/v3/generatetoken
#   knobs:                    GET {url}/_sandbox/state, POST /_sandbox/faults,
#                             /_sandbox/clear, /_sandbox/settings, /_sandbox/apps
#   the app's secret (a sandbox credential, not a real one): export SANDBOX_SECRET={secret}
# A broker config for it, complete as printed: its files are in {folder},
# removed when the sandbox stops.
[server]
listen = ["127.0.0.1:{port}"]

[defaults]
authority = "{url}"
generatetoken_url = "{url}/v3/generatetoken"

[mirror]
upstream_base = "{url}"

[msi]
generated_header_file = "{folder}/identity-header"

[profiles.default]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret_file}"
"""
    if refresh is not None:
        names = toml_list([name for pair in tenants for name in pair])
        text += f"""
# customer tenants: {", ".join(f"{d} ({t})" for d, t in tenants)}
[profiles.customers]
tenant_id = "{TENANT}"
client_id = "{CUSTOMERS_CLIENT_ID}"
credential = "refresh_token"
refresh_token_file = "{_write(folder, "refresh-token", refresh)}"
client_secret_file = "{secret_file}"
customer_tenants = [{names}]
customer_scopes = [{toml_list(CUSTOMER_SCOPES)}]
"""
    return text


def detach() -> None:
    """Fork, before the event loop starts (forking a running loop is unsafe): the parent waits
    until the child has printed the config (it then closes its stdout) and exits with 0, or 1
    if the child died first; the child goes on, in its own session, with stdin and stdout on
    /dev/null once the config is out."""
    read, write = os.pipe()
    if os.fork():
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        os._exit(0 if b"[profiles.default]" in data else 1)
    os.close(read)
    os.setsid()
    os.dup2(write, 1)
    os.close(write)


def _release_stdout() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


async def run_sandbox(
    host: str,
    port: int,
    customers: list[str] | None = None,
    *,
    detach: bool = False,
    broker_port: int = 8721,
    roles: Roles | None = None,
) -> int:
    try:
        tenants = [tenant_arg(spec) for spec in customers or ()]
    except ValueError as e:
        print(f"pc-token-broker sandbox: --customer-tenant: {e}", file=sys.stderr)
        return 2
    if not 1 <= broker_port <= 65535:
        print("pc-token-broker sandbox: --broker-port: a port, 1 to 65535", file=sys.stderr)
        return 2
    sandbox = Sandbox(host=host, port=port)
    # A throwaway credential for a fake Azure AD: printing it is the point.
    secret = f"sandbox-{secrets.token_urlsafe(16)}"
    sandbox.state.register(TENANT, CLIENT_ID, client_secret=secret)
    app = sandbox.state.register(TENANT, CUSTOMERS_CLIENT_ID, client_secret=secret)
    for domain, tenant_id in tenants:
        sandbox.state.register_customer(tenant_id, (domain,))
    try:
        await sandbox.start()
    except OSError as e:
        print(f"pc-token-broker sandbox: cannot listen on {host}:{port}: {e.strerror}")
        return 1
    folder = Path(tempfile.mkdtemp(prefix="pc-token-broker-sandbox-"))
    try:
        # The customers profile serves the refused tenants too: `doctor customers` explains them.
        listed = [*tenants, *(roles.refused_consent if roles else ())]
        refresh = sandbox.state.issue_refresh_token(app) if listed else None
        secret_file = _write(folder, "client-secret", secret)
        text = _config(sandbox.url, folder, secret, refresh, listed, broker_port)
        if roles:  # customer-tenant operators' roles (issue #26): a table and comments
            text += apply(roles, sandbox.state, TENANT, secret, secret_file, str(folder))
        print(text, flush=True)
        if detach:
            _release_stdout()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0
