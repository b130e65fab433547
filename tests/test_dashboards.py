"""The Grafana dashboard and the Prometheus alert rules in deploy/: they use only metric names
a live broker exposes (scraped here from a real /metrics), and the rules pass
`promtool check rules` (Debian's `prometheus` package; installed by this test when missing and
running as root) and fire as meant under `promtool test rules`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import aiohttp
import pytest
import yaml

from broker.config.load import parse_settings
from tests.conftest import HEADERS, config_text
from tests.support import ROOT

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RULES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
NAME = re.compile(r"\bbroker_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
# What may stand before a "{" in PromQL without being a metric name.
NOT_METRICS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def _install_promtool() -> str | None:
    """promtool, installed from Debian's `prometheus` package when missing and we are root."""
    found = shutil.which("promtool")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        env=env,
        check=False,
        timeout=900,
        capture_output=True,
    )
    return shutil.which("promtool")


def _exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboards and rules."""
    found: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
        for var in dash["templating"]["list"]:
            if var.get("type") == "query":
                found.append((f"{path.name}: ${var['name']}", var["definition"]))
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((f"{path.name}: {rule['alert']}", rule["expr"]))
    return found


def _exposed(text: str) -> set[str]:
    """Every series name the exposition can carry: sample names, and for each family its
    suffixed names (a labelled counter with no samples yet still has its TYPE line)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] not in "#"}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            if kind == "counter":  # its TYPE line may name it with or without _total
                family = family.removesuffix("_total")
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"),
            }.get(kind, ("",))
            names |= {family + s for s in suffixes}
    return names - {""}


def test_the_files_exist_and_cover_what_operators_watch():
    assert DASHBOARDS and RULES
    titles = " | ".join(
        p["title"].lower() for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]
    )
    for topic in ("tokens served", "hit ratio", "upstream calls", "latency", "headroom",
                  "fail", "rejections"):  # fmt: skip
        assert topic in titles, topic
    alerts = {
        r["alert"]
        for path in RULES
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
    }
    for alert in ("ProfileFailing", "HeadroomLow", "RefreshTokenRefused", "RejectionsSpiking",
                  "RefreshTokenAging"):  # fmt: skip
        assert f"PcTokenBroker{alert}" in alerts


async def test_every_metric_name_exists_on_a_live_metrics(sandbox, secret, run_server):
    settings = parse_settings(config_text(sandbox), env={"TEST_CLIENT_SECRET": secret})
    (address,), _ = await run_server(settings)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{address}/v1/token", headers=HEADERS) as r:
            assert r.status == 200
        async with s.get(f"http://{address}/metrics") as r:
            exposed = _exposed(await r.text())
    exprs = _exprs()
    assert len(exprs) >= 15
    for where, expr in exprs:
        names = NAME.findall(expr)
        assert names, f"{where}: no broker metric in {expr!r}"
        missing = sorted(set(names) - exposed)
        assert not missing, f"{where}: {missing} not in /metrics"
        for selector in SELECTOR.findall(expr):
            assert selector in NOT_METRICS or selector.startswith("broker_"), (where, selector)


def test_a_misspelled_name_would_be_caught():
    """The check above is not vacuous: a name the broker does not expose is found missing."""
    exposed = _exposed(
        "# HELP broker_refreshes_total x\n# TYPE broker_refreshes_total counter\n"
        "# TYPE broker_mirror_requests counter\n"
        'broker_refreshes_total{profile="p"} 1.0\n'
    )
    assert {"broker_refreshes_total", "broker_mirror_requests_total"} <= exposed
    assert "broker_refresh_total" not in exposed and "broker_refreshes_total_total" not in exposed
    assert set(NAME.findall("rate(broker_refresh_total[5m])")) - exposed


def test_rules_structure():
    for path in RULES:
        doc = yaml.safe_load(path.read_text())
        assert set(doc) == {"groups"}
        for group in doc["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
                assert rule["alert"].startswith("PcTokenBroker")
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert rule["annotations"]["summary"]
                if "for" in rule:
                    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]


@pytest.mark.timeout(900)  # the first run on a fresh machine installs Debian's prometheus
def test_promtool_checks_and_unit_tests_the_rules(tmp_path):
    promtool = _install_promtool()
    if promtool is None:
        # Not root or no apt: the structure test above is what runs (see README).
        assert os.geteuid() != 0 or not shutil.which("apt-get")
        return
    for path in RULES:
        result = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tests = ROOT / "deploy" / "prometheus" / "tests.yaml"
    text = tests.read_text().replace("rule_files:\n  - ", f"rule_files:\n  - {tests.parent}/")
    (tmp_path / "tests.yaml").write_text(text)
    result = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
