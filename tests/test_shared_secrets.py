"""The [shared] secrets, the Redis password and the fleet's key, are redacted like every other
secret (pinned in the redactor): an upstream error that echoes them puts neither into the log
nor into the caller's error body."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from tests.hostile import Hostile, raw_json
from tests.test_shared import settings_with

PASSWORD = "fleet-redis-password-7f3a9c"


async def test_an_upstream_error_echoing_the_redis_password_and_the_key_redacts_both(
    secret, start_broker, redis_db, shared_key, tmp_path
) -> None:
    key_hex = Path(shared_key).read_bytes().hex()
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    echoed = f"AADSTS7000215: invalid client; we saw {PASSWORD} and {key_hex} and {key_hex.upper()}"

    async def aad(request: web.Request) -> web.StreamResponse:
        body = {"error": "invalid_client", "error_description": echoed, "error_codes": [7000215]}
        return raw_json(json.dumps(body), status=401)

    async with Hostile() as hostile:
        hostile.aad = aad
        extra = f'password_file = "{password_file}"'
        settings = settings_with(hostile, secret, redis_db.url, shared_key, extra=extra)
        b = await start_broker(settings)
        r = await b.get("/v1/token")
        body = await r.text()
        assert r.status == 502 and "AADSTS7000215" in body
        logs = b.logs.getvalue()
        assert "AADSTS7000215" in logs
        for value in (PASSWORD, key_hex, key_hex.upper()):
            assert value not in body and value not in logs
