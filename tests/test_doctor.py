"""`pc-token-broker doctor`: for each refusal class the broker knows (and each code of the one
table the sandbox can play), against the sandbox through a real broker: the finding in words,
the AADSTS code, trace id and since when, what the broker is doing, and the fix. Exit 0
healthy, 1 needs fixing, 2 bad usage. The docs' fix table is the code's."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from broker.cli.main import main
from broker.core.tenants.codes import BY_CODE, CODES, fix_table_markdown
from broker.sandbox.customers import CATALOGUE
from tests.conftest import CLIENT_ID, HEADERS
from tests.test_tenants import gdap, tenant_id, token  # noqa: F401 - gdap is a fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("PC_TOKEN_BROKER_CONFIG", "PC_TOKEN_BROKER_URL", "PC_TOKEN_BROKER_SOCKET"):
        monkeypatch.delenv(name, raising=False)


async def doctor(b, capsys, *argv: str) -> tuple[int, dict]:
    url = str(b.client.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, main, ["doctor", *argv, "--json", "--url", url])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


async def text_doctor(b, capsys, *argv: str) -> tuple[int, str]:
    url = str(b.client.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, main, ["doctor", *argv, "--url", url])
    return code, capsys.readouterr().out


def findings(report: dict, profile: str = "gdap") -> dict[str, dict]:
    return {f["subject"]: f for f in report["profiles"][profile]["findings"]}


async def test_healthy_is_exit_0(sandbox, gdap, start_broker, capsys):  # noqa: F811
    sandbox.state.register_customer(tenant_id(1))
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(1))).status == 200
    code, report = await doctor(b, capsys)
    assert code == 0 and report["healthy"] is True
    assert report["profiles"]["gdap"] == {"healthy": True, "findings": []}
    code, text = await text_doctor(b, capsys, "gdap")
    assert code == 0 and text.strip() == "gdap: healthy"


async def test_consent_required_names_the_admin_consent_url(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
    capsys,
):
    sandbox.state.register_customer(tenant_id(1), consents=set())
    b = await start_broker(gdap())
    r = await token(b, tenant_id(1))
    assert r.status == 502
    told = (await r.json())["error"]
    code, report = await doctor(b, capsys, "gdap")
    assert code == 1 and report["healthy"] is False
    f = findings(report)[f"tenant {tenant_id(1)}"]
    assert (f["state"], f["aadsts"], f["tenant"]) == ("consent_required", 65001, tenant_id(1))
    assert f["what"] == BY_CODE[65001].words
    consent = f"{sandbox.url}/{tenant_id(1)}/adminconsent?client_id={CLIENT_ID}"
    assert consent in f["fix"]
    assert uuid.UUID(f["trace_id"]) and f["correlation_id"] == told["correlation_id"]
    assert f["since"] is not None and "next attempt in" in f["doing"]
    code, text = await text_doctor(b, capsys, "gdap")
    assert code == 1
    assert f"tenant {tenant_id(1)}: consent_required (AADSTS65001) since 20" in text
    assert f"fix:   an admin of tenant {tenant_id(1)} grants the app consent: {consent}" in text
    assert f"trace id {f['trace_id']}" in text


async def test_interaction_required_mfa_in_a_tenant_and_at_partner_center(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
    capsys,
):
    """The user signed in without MFA: a tenant that requires it refuses (50076), Partner
    Center refuses the profile's own token (900421), and the profile's token shows no MFA."""
    sandbox.state.apps[CLIENT_ID].mfa = False
    sandbox.state.register_customer(tenant_id(2), require_mfa=True)
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(2))).status == 502
    r = await b.get("/v1/token/gdap", headers=HEADERS)  # partner: Azure AD ok, Partner Center 401
    assert r.status == 502
    code, report = await doctor(b, capsys, "gdap")
    assert code == 1
    found = findings(report)
    tenant = found[f"tenant {tenant_id(2)}"]
    assert (tenant["state"], tenant["aadsts"]) == ("interaction_required", 50076)
    assert "pc-token-broker consent gdap" in tenant["fix"] and "MFA" in tenant["fix"]
    partner = found["partner token"]
    assert (partner["state"], partner["aadsts"]) == ("failing", 900421)
    assert "MFA" in partner["what"] and "pc-token-broker consent gdap" in partner["fix"]
    assert "MFA" not in found  # the 900421 finding says it already


async def test_refresh_token_invalid_says_get_a_new_one(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
    capsys,
):
    sandbox.state.register_customer(tenant_id(1))
    sandbox.state.apps[CLIENT_ID].refresh_token_refusal = 700082
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(1))).status == 502
    code, report = await doctor(b, capsys, "gdap", "--tenant", tenant_id(1))
    assert code == 1
    found = findings(report)
    every = found["every customer tenant"]  # the partner's own tenant confirmed it
    assert (every["state"], every["aadsts"]) == ("refresh_token_invalid", 700082)
    assert "90 days" in every["what"] and "pc-token-broker consent gdap" in every["fix"]
    assert "no customer tenant asks Azure AD for" in every["doing"]


async def test_tenant_not_found_and_gdap(sandbox, gdap, start_broker, capsys):  # noqa: F811
    sandbox.state.register_customer(tenant_id(3), relationship=False)
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(9))).status == 502  # no such tenant
    assert (await token(b, tenant_id(3))).status == 502  # no GDAP relationship
    code, report = await doctor(b, capsys, "gdap")
    assert code == 1
    found = findings(report)
    missing = found[f"tenant {tenant_id(9)}"]
    assert (missing["state"], missing["aadsts"]) == ("tenant_not_found", 90002)
    assert "customer_tenants" in missing["fix"] and "cloud" in missing["fix"]
    gdap_row = found[f"tenant {tenant_id(3)}"]
    assert gdap_row["aadsts"] == 90072 and "GDAP relationship" in gdap_row["fix"]


async def test_throttled_says_the_broker_waits(sandbox, gdap, start_broker, capsys):  # noqa: F811
    sandbox.state.register_customer(tenant_id(1))
    sandbox.state.fail("aad", 429, retry_after="120")
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(1))).status == 503
    code, report = await doctor(b, capsys, "gdap")
    assert code == 1
    f = findings(report)[f"tenant {tenant_id(1)}"]
    assert (f["state"], f["aadsts"]) == ("throttled", 50196)
    assert f["fix"].startswith("nothing") and "next attempt in 2 min" in f["doing"]


PLAYABLE = [c.code for c in CODES if c.code in CATALOGUE]


@pytest.mark.parametrize("code", PLAYABLE)
async def test_every_code_of_the_table_the_sandbox_plays_gets_its_row(
    sandbox,
    gdap,  # noqa: F811
    start_broker,
    capsys,
    code,
):
    sandbox.state.register_customer(tenant_id(1), refusal=code)
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(1))).status == 502
    exit_code, report = await doctor(b, capsys, "gdap", "--tenant", tenant_id(1))
    assert exit_code == 1
    f = findings(report)[f"tenant {tenant_id(1)}"]
    row = BY_CODE[code]
    assert (f["aadsts"], f["what"]) == (code, row.words)
    assert f["state"] == row.state
    assert f["fix"] and "{" not in f["fix"]


def test_the_table_covers_the_issue_codes_and_the_sandbox_plays_nearly_all():
    for code in (900421, 50076, 50079, 50074, 700082, 50173, 65001, 7000112, 50020):
        assert code in BY_CODE, code
    assert len(PLAYABLE) >= len(CODES) - 2  # 900421 (Partner Center) and 50196 (a 429)


async def test_online_checks_again_and_sees_the_fix(sandbox, gdap, start_broker, capsys):  # noqa: F811
    """The admin consented: --online drops the tenant's remembered refusal and asks once."""
    customer = sandbox.state.register_customer(tenant_id(1), consents=set())
    b = await start_broker(gdap())
    assert (await token(b, tenant_id(1))).status == 502
    customer.consents = {"*"}
    code, _ = await doctor(b, capsys, "gdap")
    assert code == 1  # offline: still remembered
    before = sandbox.state.counts["aad"]
    code, report = await doctor(b, capsys, "gdap", "--online")
    assert code == 0, report
    # One forced refresh of the profile's own token (Azure AD + Partner Center) and one
    # Azure AD call for the one tenant checked.
    assert sandbox.state.counts["aad"] - before == 2


async def test_usage_errors_exit_2(sandbox, gdap, start_broker, capsys):  # noqa: F811
    b = await start_broker(gdap())
    url = str(b.client.make_url("")).rstrip("/")
    loop = asyncio.get_running_loop()
    for argv in (["doctor", "nosuch"], ["doctor", "--tenant", tenant_id(1)],
                 ["doctor", "default", "--tenant", tenant_id(1)]):  # fmt: skip
        assert await loop.run_in_executor(None, main, [*argv, "--url", url]) == 2, argv
        assert capsys.readouterr().err.startswith("pc-token-broker: doctor: ")


def test_the_docs_fix_table_is_the_codes_table():
    page = (ROOT / "docs" / "operate" / "doctor.md").read_text()
    assert fix_table_markdown() in page


async def test_check_config_online_reports_mfa_from_the_running_daemon(
    sandbox, secret, tmp_path, run_server, capsys, monkeypatch
):
    """check-config --online never redeems the refresh token itself (that would rotate it
    outside the daemon): it asks the running daemon, or says why it cannot."""
    from broker.config.load import parse_settings
    from tests.conftest import config_text
    from tests.support import free_port

    monkeypatch.setenv("TEST_CLIENT_SECRET", secret)
    app = sandbox.state.apps[CLIENT_ID]
    rt = tmp_path / "user.refresh-token"
    rt.write_text(sandbox.state.issue_refresh_token(app) + "\n")
    rt.chmod(0o600)
    port = free_port()
    profiles = f'[profiles.user]\ncredential = "refresh_token"\nrefresh_token_file = "{rt}"\n'
    text = config_text(sandbox, profiles="[profiles.default]\nwarm = false\n" + profiles)
    text = text.replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]')
    config = tmp_path / "config.toml"
    config.write_text(text)
    config.chmod(0o600)
    loop = asyncio.get_running_loop()

    async def check() -> str:
        argv = ["check-config", "--config", str(config), "--online"]
        assert await loop.run_in_executor(None, main, argv) == 0
        return capsys.readouterr().out

    out = await check()
    assert "MFA:             cannot tell (" in out and "start it and run again" in out
    calls = sandbox.state.counts["aad"]
    app.mfa = False
    await run_server(parse_settings(text, env={"TEST_CLIENT_SECRET": secret}))
    # The warm profile's first fetch: Azure AD (its answer's amr read), then Partner Center.
    await sandbox.state.wait_calls("partner", 1)
    out = await check()
    assert "MFA:             user: NO" in out and "pc-token-broker consent user" in out
    assert out.rstrip().endswith("OK (online checks passed)")
    assert sandbox.state.counts["aad"] == calls + 1  # check-config redeemed nothing


def test_doctor_survives_whatever_the_daemon_answers():
    """A hostile or broken daemon's JSON (any shape, any types) gives findings or none, never a
    crash: the rows are read with isinstance checks."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from broker.cli.doctor import profile_findings, render_json, render_text, tenant_findings

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "state",
                        "last_error",
                        "aadsts",
                        "message",
                        "since",
                        "days_left",
                        "age_s",
                        "upstream_status",
                        "code",
                        "tenant",
                        "next_attempt_in",
                        "failures_in_row",
                        "profile_block",
                        "retry_in",
                        "mfa",
                        "aad",
                        "partner",
                        "refresh_token",
                        "customer_tenants",
                        "authority",
                    ]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
    rows = st.dictionaries(
        st.sampled_from(["aad", "partner", "mfa", "refresh_token", "customer_tenants",
                         "authority", "client_id", "tenant_id"]),
        values,
    )  # fmt: skip

    @settings(max_examples=150, deadline=None)
    @given(
        rows,
        st.lists(
            st.dictionaries(
                st.text(max_size=10)
                | st.sampled_from(["state", "tenant", "last_error", "next_attempt_in"]),
                values,
            ),
            max_size=4,
        ),
    )
    def check(row, tenants):
        found = profile_findings("p", row) + tenant_findings("p", row, tenants)
        render_text({"p": found})
        json.dumps(render_json({"p": found}))

    check()
