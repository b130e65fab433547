"""A deliberately misbehaving Azure AD and Partner Center on loopback, for attacks the sandbox's
fault knobs do not cover: each test says what the two endpoints answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _unset(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "not_configured"}, status=500)


class Hostile:
    """`aad` answers `POST /{tenant}/oauth2/v2.0/token`; `partner` answers `/generatetoken`
    and `/v3/generatetoken`. Calls are counted by endpoint."""

    def __init__(self) -> None:
        self.aad: Answer = _unset
        self.partner: Answer = _unset
        self.calls: Counter[str] = Counter()
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("")).rstrip("/")

    async def __aenter__(self) -> Hostile:
        async def aad(request: web.Request) -> web.StreamResponse:
            self.calls["aad"] += 1
            return await self.aad(request)

        async def partner(request: web.Request) -> web.StreamResponse:
            self.calls["partner"] += 1
            return await self.partner(request)

        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", aad)
        app.router.add_post("/generatetoken", partner)
        app.router.add_post("/v3/generatetoken", partner)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()


def raw_json(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """An answer sent as written: any text (NaN, Infinity, deep nesting), labelled JSON."""
    return web.Response(
        status=status, text=text, content_type="application/json", headers=headers or {}
    )
