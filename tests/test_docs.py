"""The documentation site: it builds strictly (a broken link or anchor, a page missing from the
nav fail), and each reference page made from the code (tools/docs_reference.py) holds exactly
what its source holds: every command and option of the parser, every key of the schema, every
metric family of the registry, every route of the router in openapi.yaml (validated)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate

from tests.conftest import make_settings
from tests.support import ROOT
from tools import docs_reference as ref


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`'s build, in the suite: a broken link, a missing page or a generator that
    raises fails here."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("reference/cli.html", "reference/config.html", "reference/metrics.html"):
        assert (tmp_path / page).is_file(), page
    assert (tmp_path / "reference/openapi.yaml").is_file()
    assert "WARNING" not in proc.stderr, proc.stderr


def test_the_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """The strictness the first test relies on: a page with a broken link fails the build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\n[gone](nowhere.md)\n")
    (docs / "orphan.md").write_text("# not in the nav\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = config[: config.index("\nhooks:")] + config[config.index("\nexclude_docs:") :]
    config = config[: config.index("\nnav:")] + "\nnav:\n  - index.md\n"
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode != 0
    assert "nowhere.md" in proc.stderr and "orphan.md" in proc.stderr


def test_the_cli_reference_is_every_commands_help() -> None:
    from broker.cli.parser import commands, parser

    page = ref.cli_page()
    assert parser().format_help().rstrip() in page
    names = list(commands())
    assert {"serve", "token", "check-config", "sandbox", "completion"} <= set(names)
    for name, sub in commands().items():
        assert f"\n## {name}\n" in page, name
        assert sub.format_help().rstrip() in page, name
    # Every command the top-level help lists has its section (none is forgotten by commands()).
    listed = re.findall(r"^    ([a-z-]+)", parser().format_help(), re.M)
    assert set(listed) == set(names)


def test_the_config_reference_has_every_key_with_its_default() -> None:
    from broker.config.reference import keys

    page = ref.config_page()
    rows = {
        (table, m.group(1))
        for table, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", page, re.M | re.S)
        for m in re.finditer(r"^\| `([a-z_]+)` \|", body, re.M)
    }
    expected = set()
    for key in keys():
        section, name = key.path.rsplit(".", 1)
        table = "[profiles.NAME] and [defaults]" if section == "profiles.<name>" else f"[{section}]"
        expected.add((table, name))
    assert rows == expected
    listen = next(line for line in page.splitlines() if line.startswith("| `listen` |"))
    assert '`["127.0.0.1:8721"]`' in listen and "restart" in listen


def test_the_metrics_reference_is_the_registry() -> None:
    from broker.observe.metrics import Metrics

    families = {
        f.name + ("_total" if f.type == "counter" else ""): f.type
        for f in Metrics().registry.collect()
    }
    page = ref.metrics_page()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([a-z]+) \|", page, re.M))
    # The scrape-time collectors' families too: they are registered by the broker at start.
    documented = {name for name, *_ in ref.metric_families()}
    assert set(families) <= set(rows) == documented
    for name, kind in families.items():
        assert rows[name] == kind, name
    assert "| `broker_cache_requests_total` | counter | `profile`, `kind`, `result` |" in page
    assert "| `broker_entry_state` | gauge | `profile`, `kind`, `state` |" in page


async def test_the_openapi_document_is_valid_and_covers_every_route(sandbox, secret) -> None:
    from broker.http.app import create_app

    spec = ref.openapi()
    validate(spec)  # OpenAPI 3.1, by openapi-spec-validator
    assert spec["openapi"].startswith("3.1")
    settings = make_settings(sandbox, secret)
    app = create_app(settings)
    # A profile configured at start also has a plain path of its own (`broker.http.routes`):
    # the documented /v1/token/{profile}.
    own = {f"/v1/token/{name}" for name in settings.profiles}
    routes = {
        (r.method.lower(), "/v1/token/{profile}" if path in own else path)
        for r in app.router.routes()
        if r.method != "*" and r.resource is not None
        for path in (r.resource.canonical,)
    }
    documented = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert routes == documented
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "post") and path != "/healthz":  # /healthz: 200 or nothing
                assert any(s.startswith("4") for s in op["responses"]), (method, path)
    page = ref.http_page()
    for method, path in routes:
        assert f"## `{method.upper()} {path}`" in page
