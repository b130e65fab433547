"""The built-in sandbox upstream: a fake Azure AD token endpoint and a fake Partner Center
`/generatetoken`, faithful to the real contracts, with knobs for lifetimes, latency and faults.

Used by the tests, by `pc-token-broker demo`, and by users' own integration tests
(`pc-token-broker sandbox --port N`, knobs over HTTP under `/_sandbox/`).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from aiohttp import web

from broker.sandbox import aad, devicecode, partner
from broker.sandbox.state import AppRegistration, SandboxState

__all__ = ["AppRegistration", "Sandbox", "SandboxState", "create_sandbox_app"]


def _admin_routes(state: SandboxState) -> list[web.RouteDef]:
    async def show(_request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def fault(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            state.fail(
                data["endpoint"],
                int(data.get("status", 500)),
                mode=data.get("mode", "status"),
                times=data.get("times", 1),
                retry_after=data.get("retry_after"),
                delay=float(data.get("delay", 0)),
            )
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            return web.json_response({"error": f"bad fault: {e}"}, status=400)
        return web.json_response(state.snapshot())

    async def clear(_request: web.Request) -> web.Response:
        state.clear()
        return web.json_response(state.snapshot())

    async def settings(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            for endpoint, seconds in data.get("lifetimes", {}).items():
                state.lifetimes[endpoint] = float(seconds)
            for endpoint, seconds in data.get("latency", {}).items():
                state.latency[endpoint] = float(seconds)
            state.clock_skew = float(data.get("clock_skew", state.clock_skew))
        except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as e:
            return web.json_response({"error": f"bad settings: {e}"}, status=400)
        return web.json_response(state.snapshot())

    async def register(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            state.register(
                data["tenant_id"], data["client_id"], client_secret=data.get("client_secret")
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            return web.json_response({"error": f"bad app: {e}"}, status=400)
        return web.json_response({"registered": data["client_id"]})

    async def devicelogin(request: web.Request) -> web.Response:
        return web.Response(text=devicecode.SELF_PAGE_TEXT)

    return [
        web.get(devicecode.SELF_PAGE, devicelogin),
        web.get("/_sandbox/state", show),
        web.post("/_sandbox/faults", fault),
        web.post("/_sandbox/clear", clear),
        web.post("/_sandbox/settings", settings),
        web.post("/_sandbox/apps", register),
    ]


def create_sandbox_app(state: SandboxState) -> web.Application:
    app = web.Application(client_max_size=256 * 1024)
    generatetoken = partner.make_handler(state)
    app.add_routes(
        [
            web.post("/{tenant}/oauth2/v2.0/token", aad.make_handler(state)),
            web.post("/{tenant}/oauth2/v2.0/devicecode", aad.make_devicecode_handler(state)),
            web.post("/generatetoken", generatetoken),
            web.post("/v3/generatetoken", generatetoken),
            *_admin_routes(state),
        ]
    )
    return app


class Sandbox:
    """Runs the sandbox on loopback. `async with Sandbox() as sb: sb.url ...`"""

    def __init__(
        self, state: SandboxState | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state = state or SandboxState()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def authority(self) -> str:
        return self.url

    @property
    def generatetoken_url(self) -> str:
        return f"{self.url}/v3/generatetoken"

    async def start(self) -> Sandbox:
        self._runner = web.AppRunner(
            create_sandbox_app(self.state),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))  # port 0: the kernel picks a free one
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
