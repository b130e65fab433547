"""Clouds and proxies: `cloud = ...` sets authority, Partner Center URL and scope together
(explicit keys win), and every upstream call goes through a real forward proxy on loopback
(proxy.py, a test extra) when HTTP(S)_PROXY or `[server] upstream_proxy` says so, except for
NO_PROXY hosts. The proxy marks what it forwards with `Via: 1.1 proxy.py ...`, which the
sandbox records."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from broker.config.clouds import CLOUDS
from broker.config.load import ConfigError, parse_settings
from broker.core.upstream import Proxies
from tests.conftest import HEADERS, config_text
from tests.support import make_certificate

PROXY_USER = "broker"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """proxy.py on a free loopback port, requiring Basic credentials. Yields (url, password)."""
    where = tmp_path_factory.mktemp("proxy")
    password = secrets.token_urlsafe(16)
    port_file = where / "port"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "proxy",
            "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            "--num-workers", "1", "--num-acceptors", "1",
            "--basic-auth", f"{PROXY_USER}:{password}",
            "--log-file", str(where / "log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None, (where / "log").read_text()
        assert time.monotonic() < deadline, "proxy.py did not start within 30 s"
        time.sleep(0.05)  # an external process starting: nothing to await on
    yield f"http://127.0.0.1:{port_file.read_text().strip()}", password
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def _settings(sandbox, secret, server: str = ""):
    return parse_settings(config_text(sandbox, server=server), env={"TEST_CLIENT_SECRET": secret})


async def _token(address: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/token", headers=HEADERS) as r:
            return r.status, await r.json()


def _vias(sandbox) -> list[str]:
    """How each upstream call reached the sandbox: "proxy" or "direct". proxy.py marks the first
    request of a proxy connection with Via; later requests on the same keep-alive connection it
    relays as they came, still carrying the Proxy-Authorization only a proxy is sent."""
    return [
        "proxy"
        if "proxy.py" in call.headers.get("Via", "") or "Proxy-Authorization" in call.headers
        else "direct"
        for call in sandbox.state.calls
    ]


async def test_http_proxy_from_the_environment_carries_every_upstream_call(
    sandbox, secret, run_server, proxy, no_proxy_env, witness
):
    url, password = proxy
    witness.secrets.add(password)
    no_proxy_env.setenv("HTTP_PROXY", url.replace("//", f"//{PROXY_USER}:{password}@"))
    (address,), logs = await run_server(_settings(sandbox, secret))
    status, body = await _token(address)
    assert status == 200, body
    vias = _vias(sandbox)
    assert vias == ["proxy", "proxy"], vias
    banner = next(line for line in logs.getvalue().splitlines() if '"listening"' in line)
    assert "HTTP_PROXY 127.0.0.1:" in banner and password not in banner


async def test_no_proxy_hosts_bypass_the_proxy(
    sandbox, secret, run_server, proxy, no_proxy_env, tmp_path
):
    url, _ = proxy
    no_proxy_env.setenv("HTTP_PROXY", url)  # no credentials: through it, every call is a 407
    no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    creds = tmp_path / "proxy-credentials"
    creds.write_text("nobody:wrong\n")
    creds.chmod(0o600)
    server = f'upstream_proxy = "{url}"\nupstream_proxy_credentials_file = "{creds}"'
    (address,), _ = await run_server(_settings(sandbox, secret, server))
    status, body = await _token(address)
    assert status == 200, body
    vias = _vias(sandbox)
    assert vias == ["direct", "direct"], vias


async def test_upstream_proxy_with_a_credentials_file(
    sandbox, secret, run_server, proxy, no_proxy_env, tmp_path, witness
):
    url, password = proxy
    witness.secrets.add(password)
    creds = tmp_path / "proxy-credentials"
    creds.write_text(f"{PROXY_USER}:{password}\n")
    creds.chmod(0o600)
    server = f'upstream_proxy = "{url}"\nupstream_proxy_credentials_file = "{creds}"'
    (address,), _ = await run_server(_settings(sandbox, secret, server))
    status, body = await _token(address)
    assert status == 200, body
    assert _vias(sandbox) == ["proxy", "proxy"]


async def test_wrong_proxy_credentials_are_the_proxy_s_407_not_a_call_upstream(
    sandbox, secret, run_server, proxy, no_proxy_env, tmp_path
):
    url, _ = proxy
    creds = tmp_path / "proxy-credentials"
    creds.write_text(f"{PROXY_USER}:not-the-password\n")
    creds.chmod(0o600)
    server = f'upstream_proxy = "{url}"\nupstream_proxy_credentials_file = "{creds}"'
    (address,), _ = await run_server(_settings(sandbox, secret, server))
    status, body = await _token(address)
    assert status == 502 and body["error"]["upstream_status"] == 407, body
    assert not sandbox.state.calls


@pytest.mark.parametrize(
    ("server", "path", "fragment"),
    [
        ('upstream_proxy = "http://u:p@proxy:3128"', "server.upstream_proxy", "no credentials"),
        ('upstream_proxy = "socks5://proxy:1080"', "server.upstream_proxy", "http://HOST:PORT"),
        ('upstream_proxy = "http://proxy:99999"', "server.upstream_proxy", "http://HOST:PORT"),
        ('upstream_proxy = "http://proxy:3128/x"', "server.upstream_proxy", "http://HOST:PORT"),
        ('upstream_proxy = "http://proxy:3128\\r\\nX: y"', "server.upstream_proxy", "HOST:PORT"),
        ('upstream_proxy = "http://pro xy:3128"', "server.upstream_proxy", "http://HOST:PORT"),
        ('upstream_proxy = "http://proxy:3128?a=b"', "server.upstream_proxy", "HOST:PORT"),
        ('upstream_proxy = ["http://proxy:3128"]', "server.upstream_proxy", "string"),
        ('upstream_proxy_credentials = "u:p"', "server.upstream_proxy_credentials", "unknown"),
        (
            'upstream_proxy_credentials_file = "/nonexistent/c"',
            "server.upstream_proxy_credentials_file",
            "",
        ),
    ],
)
def test_upstream_proxy_config_problems(sandbox_url_config, server, path, fragment):
    with pytest.raises(ConfigError) as e:
        parse_settings(sandbox_url_config(server=server), env={"TEST_CLIENT_SECRET": "x"})
    assert any(p.path == path and fragment in p.message for p in e.value.problems), e.value


def test_proxy_credentials_file_must_hold_user_colon_password(sandbox_url_config, tmp_path):
    creds = tmp_path / "c"
    creds.write_text("just-a-password\n")
    creds.chmod(0o600)
    server = f'upstream_proxy = "http://proxy:3128"\nupstream_proxy_credentials_file = "{creds}"'
    with pytest.raises(ConfigError) as e:
        parse_settings(sandbox_url_config(server=server), env={"TEST_CLIENT_SECRET": "x"})
    assert "user:password" in str(e.value) and "just-a-password" not in str(e.value)


def test_proxy_choice_follows_the_curl_rules():
    env = {
        "https_proxy": "http://lower:3128",
        "HTTPS_PROXY": "http://upper:3128",
        "HTTP_PROXY": "http://plain:3128",
        "NO_PROXY": "internal.example,.corp",
    }
    p = Proxies(env=env)
    assert p.for_url("https://login.microsoftonline.com/t")[0] == "http://lower:3128"
    assert p.for_url("http://127.0.0.1:9/x")[0] == "http://plain:3128"
    assert p.for_url("https://internal.example/x") == (None, None)
    assert p.for_url("https://pc.corp/x") == (None, None)
    assert Proxies(env={}).for_url("https://login.microsoftonline.com/t") == (None, None)
    configured = Proxies("http://proxy:8080", env=env)
    assert configured.for_url("https://login.microsoftonline.com/t")[0] == "http://proxy:8080"
    assert configured.for_url("https://pc.corp/x") == (None, None)


# -- sovereign clouds --------------------------------------------------------------------------


@pytest.fixture
def sandbox_url_config():
    """A config like the tests' usual one, with endpoints left to the cloud keys."""

    def make(*, defaults: str = "", profiles: str = "[profiles.default]\n", server: str = ""):
        return f"""
[server]
listen = ["127.0.0.1:0"]
{server}
[defaults]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-2222-4333-8444-555555555555"
client_secret_env = "TEST_CLIENT_SECRET"
{defaults}
{profiles}
"""

    return make


def _load(text: str):
    return parse_settings(text, env={"TEST_CLIENT_SECRET": "x"})


@pytest.mark.parametrize(
    ("cloud", "authority", "url", "scope"),
    [
        (
            "public",
            "https://login.microsoftonline.com",
            "https://api.partnercenter.microsoft.com/v3/generatetoken",
            "https://api.partnercenter.microsoft.com/.default",
        ),
        (
            "usgov",
            "https://login.microsoftonline.us",
            "https://api.partnercenter.microsoft.com/v3/generatetoken",
            "https://api.partnercenter.microsoft.com/.default",
        ),
        (
            "china",
            "https://login.chinacloudapi.cn",
            "https://partner.partnercenterapi.microsoftonline.cn/generatetoken",
            "https://partner.partnercenterapi.microsoftonline.cn/.default",
        ),
    ],
)
def test_a_cloud_in_defaults_sets_the_three_endpoints(
    sandbox_url_config, cloud, authority, url, scope
):
    settings = _load(sandbox_url_config(defaults=f'cloud = "{cloud}"'))
    p = settings.profiles["default"]
    assert (p.cloud, p.authority, p.generatetoken_url, p.scope) == (cloud, authority, url, scope)
    assert p.token_url == f"{authority}/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert settings.mirror.upstream_base == CLOUDS[cloud]["mirror_upstream_base"]


def test_explicit_keys_win_over_the_cloud(sandbox_url_config):
    settings = _load(
        sandbox_url_config(
            defaults='cloud = "china"\nscope = "https://example.test/.default"',
            profiles='[profiles.default]\n[profiles.gov]\ncloud = "usgov"\n'
            'authority = "https://login.example.test"\n'
            '[mirror]\nupstream_base = "https://pc.example.test"\n',
        )
    )
    china, gov = settings.profiles["default"], settings.profiles["gov"]
    assert china.authority == "https://login.chinacloudapi.cn"
    assert china.scope == "https://example.test/.default"  # [defaults]' own key beats its cloud
    # The profile's own cloud beats what [defaults] set; its own key beats its cloud.
    assert gov.authority == "https://login.example.test"
    assert gov.generatetoken_url == "https://api.partnercenter.microsoft.com/v3/generatetoken"
    assert gov.scope == "https://api.partnercenter.microsoft.com/.default"
    assert settings.mirror.upstream_base == "https://pc.example.test"


def test_no_cloud_is_public(sandbox_url_config):
    p = _load(sandbox_url_config()).profiles["default"]
    assert (p.cloud, p.authority) == ("public", "https://login.microsoftonline.com")


@pytest.mark.parametrize("value", ['"mars"', "3", '["usgov"]', '""'])
def test_an_unknown_cloud_is_a_problem_with_its_key_path(sandbox_url_config, value):
    for text, path in (
        (sandbox_url_config(defaults=f"cloud = {value}"), "defaults.cloud"),
        (
            sandbox_url_config(profiles=f"[profiles.default]\ncloud = {value}"),
            "profiles.default.cloud",
        ),
    ):
        with pytest.raises(ConfigError) as e:
            _load(text)
        assert [p.path for p in e.value.problems] == [path], e.value


async def test_a_cloud_profile_fetches_from_its_authority(sandbox, secret, run_server):
    """Through the real runner: cloud = "usgov" with the sandbox as authority override still
    serves (explicit key wins) and the profile reports its cloud in /v1/profiles."""
    text = config_text(sandbox, defaults='cloud = "usgov"')
    (address,), _ = await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    status, body = await _token(address)
    assert status == 200, body
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/profiles", headers=HEADERS) as r:
            assert (await r.json())["profiles"]["default"]["cloud"] == "usgov"


def test_example_config_mentions_the_clouds():
    text = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    assert "cloud" in text and "upstream_proxy" in text


# -- https upstreams: a CONNECT tunnel through the proxy ----------------------------------------


def _self_signed(where: Path) -> ssl.SSLContext:
    """A TLS server context with a throwaway self-signed certificate for 127.0.0.1."""
    pem, _ = make_certificate(ip="127.0.0.1")
    (where / "server.pem").write_bytes(pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(where / "server.pem")
    return ctx


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        # Through the tunnel the broker meets the self-signed certificate and, rightly, refuses
        # it: the CONNECT itself was accepted with the credentials.
        ("right", "ClientConnectorCertificateError"),
        ("wrong", "ClientHttpProxyError"),  # the proxy's 407 to the CONNECT
    ],
)
async def test_https_upstreams_are_tunnelled_with_the_proxy_credentials(
    sandbox, secret, run_server, proxy, no_proxy_env, tmp_path, witness, credentials, expected
):
    url, password = proxy
    witness.secrets.add(password)
    tls = web.AppRunner(web.Application())
    await tls.setup()
    site = web.TCPSite(tls, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
    await site.start()
    port = tls.addresses[0][1]
    try:
        user = f"{PROXY_USER}:{password if credentials == 'right' else 'nope'}"
        no_proxy_env.setenv("HTTPS_PROXY", url.replace("//", f"//{user}@"))
        text = config_text(sandbox).replace(
            f'authority = "{sandbox.url}"', f'authority = "https://127.0.0.1:{port}"'
        )
        (address,), _ = await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
        status, body = await _token(address)
        assert status == 503 and expected in body["error"]["message"], body
    finally:
        await tls.cleanup()
