"""`status` and `tenants` against a hostile or broken daemon: any JSON shape of /v1/profiles
and /v1/tenants gives a table or nothing, never a traceback (a huge number, a string where a
number was, a list where an object was), no control character reaches the terminal, and a
tenant listing that pages forever ends."""

from __future__ import annotations

import json

import pytest

from tests.test_doctor_hostile import ESC, FakeDaemon, no_env  # noqa: F401 - a fixture

KEYS = ["state", "last_error", "code", "upstream_status", "expires_in", "expires_on",
        "next_attempt_in", "failures_in_row", "upstream_calls", "aad", "partner", "mfa",
        "refresh_token", "age_s", "days_left", "keep_alive_days", "customer_tenants",
        "tenants", "tokens", "profile_block", "retry_in", "aadsts", "trace_id", "tenant",
        "correlation_id"]  # fmt: skip


def test_the_summaries_survive_whatever_the_daemon_answers():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from broker.cli.out import shown_lines
    from broker.cli.summary import customer_lines, status_table, tenants_table, troubles

    scalars = (st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400)
               | st.floats(allow_nan=False) | st.text(max_size=12))  # fmt: skip
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
        ),
        max_leaves=24,
    )
    profiles = st.dictionaries(st.text(max_size=5), values, max_size=3)
    rows = st.lists(values, max_size=3)

    @settings(max_examples=300, deadline=None)
    @given(profiles, values, rows)
    def check(table, page, tenant_rows):
        text = "\n".join(
            [status_table(table), *customer_lines(table), *troubles(table),
             tenants_table(page if isinstance(page, dict) else {}, tenant_rows)]
        )  # fmt: skip
        assert all(c.isprintable() for line in shown_lines(text).split("\n") for c in line)

    check()


async def test_status_prints_no_escape(capsys):
    from tests.test_doctor_hostile import PROFILE_ROW, doctor

    error = {**PROFILE_ROW["aad"]["last_error"], "code": f"refused{ESC}", "upstream_status": ESC}
    row = {**PROFILE_ROW, "aad": {**PROFILE_ROW["aad"], "last_error": error}}
    body = json.dumps({"profiles": {f"p{ESC}": row}, "shared": {"state": ESC}})
    async with FakeDaemon(body, lambda n: json.dumps({"tenants": []})) as url:
        import asyncio

        from broker.cli.main import main

        code = await asyncio.get_running_loop().run_in_executor(
            None, main, ["status", "--url", url]
        )
        out, err = capsys.readouterr()
    assert code == 1 and "\x1b" not in out + err and "failing" in out
    assert doctor  # the same fake daemon as doctor's tests


@pytest.mark.parametrize(
    "page",
    [lambda n: json.dumps({"tenants": [], "next": "x"}),
     lambda n: json.dumps({"tenants": [{"tenant": "t", "state": "ok"}], "next": "same"})],
    ids=["empty pages", "the same cursor"],
)  # fmt: skip
async def test_tenants_listing_that_pages_forever_ends(capsys, page):
    import asyncio

    from broker.cli.main import main

    daemon = FakeDaemon(json.dumps({"profiles": {}}), page)
    async with daemon as url:
        code = await asyncio.get_running_loop().run_in_executor(
            None, main, ["tenants", "gdap", "--url", url]
        )
    assert daemon.calls["tenants"] <= 2 and code in (0, 1), daemon.calls


@pytest.mark.parametrize(
    "body",
    [
        b'{"profiles": {"p\xff": {"state": "ok\xfe"}}}',
        b'{"profiles": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"profiles": {"p": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}}",
        b'{"profiles": {"p": {"state": NaN, "expires_in": Infinity, "upstream_calls": 1e999}}}',
    ],
    ids=["not UTF-8", "arrays nested deep", "objects nested deep", "NaN and Infinity"],
)
async def test_an_answer_not_utf8_nested_deep_or_with_nan_is_one_line_not_a_traceback(capsys, body):
    """/v1/profiles answered (200) with bytes that are not UTF-8, JSON nested deeper than
    Python's parser recurses, or NaN/Infinity (not JSON): status and doctor, as text or
    --json, print nothing on stdout and one line on stderr, exit 1."""
    import asyncio

    from broker.cli.main import main

    async with FakeDaemon(body, lambda n: json.dumps({"tenants": []})) as url:
        for argv in (["status"], ["status", "--json"], ["doctor"], ["doctor", "--json"]):
            code = await asyncio.get_running_loop().run_in_executor(
                None, main, [*argv, "--url", url]
            )
            out, err = capsys.readouterr()
            assert code == 1 and out == "", (argv, out[:200])
            assert err.count("\n") == 1 and "Traceback" not in err, (argv, err[-300:])
