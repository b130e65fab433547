"""The documentation's reference pages, made from the code at `mkdocs build` time (never
committed, so they cannot drift and nobody merges them): the command line from its parser, the
configuration from its schema, the metrics from their registry, the HTTP API from
docs/reference/openapi.yaml. `tools/docs_hooks.py` adds them to the site; tests/test_docs.py
checks each against its source."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "reference" / "openapi.yaml"
GENERATED = "This page is generated from the code when the site is built."


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# -- the command line --------------------------------------------------------------------------


def cli_page() -> str:
    from broker.cli.parser import commands, parser

    out = [
        "# Command line reference",
        "",
        f"{GENERATED} It is `pc-token-broker --help` and each `pc-token-broker COMMAND --help`,"
        " word for word. How to use the commands: [Command line](../use/cli.md).",
        "",
        "## pc-token-broker",
        "",
        "```text",
        parser().format_help().rstrip(),
        "```",
    ]
    for name, sub in commands().items():
        out += ["", f"## {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


# -- the configuration -------------------------------------------------------------------------


def _default(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{json.dumps(value)}`"


def config_page() -> str:
    from broker.config.reference import PROFILE_PATH, keys

    out = [
        "# Configuration reference",
        "",
        f"{GENERATED} Every key the file accepts, from the schema (`broker/config/schema.py`,"
        " `profile_schema.py`): its type, default and meaning, whether `SIGHUP` applies it"
        " (*live*) or only a restart does (*restart*). Keys under"
        f" `{PROFILE_PATH}` may also be set in `[defaults]`, which every profile inherits."
        " A commented example of a whole file is `config.example.toml`; `pc-token-broker"
        " check-config` validates one. Unknown keys are errors.",
    ]
    table = None
    for key in keys():
        section = key.path.rsplit(".", 1)[0]
        if section != table:
            table = section
            title = "[profiles.NAME] and [defaults]" if section == PROFILE_PATH else f"[{section}]"
            out += [
                "",
                f"## {title}",
                "",
                "| key | type | default | reload | meaning |",
                "|---|---|---|---|---|",
            ]
        name = key.path.rsplit(".", 1)[1]
        kind = key.type
        if key.minimum is not None or key.maximum is not None:
            low = "" if key.minimum is None else f"≥ {key.minimum:g}"
            high = "" if key.maximum is None else f"≤ {key.maximum:g}"
            kind += " (" + ", ".join(b for b in (low, high) if b) + ")"
        meaning = key.meaning
        if key.credentials:
            meaning += " (credential: " + ", ".join(f"`{c}`" for c in key.credentials) + ")"
        default = "**required**" if key.required else _default(key.default)
        out.append(
            f"| `{name}` | {_cell(kind)} | {_cell(default)} | {key.reload} | {_cell(meaning)} |"
        )
    return "\n".join(out) + "\n"


# -- the metrics -------------------------------------------------------------------------------


def metric_families() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(name as exposed, type, help, label names) of every family on a broker's registry.
    Label names are read from samples, so each metric gets one: wrappers are given dummy label
    values, the scrape-time collectors a one-row snapshot (a collector whose snapshot rows grew
    fields the dummy lacks is listed from an empty snapshot: its names, without labels)."""
    from prometheus_client.metrics import MetricWrapperBase

    from broker.observe.metrics import Metrics

    metrics = Metrics()
    entry = SimpleNamespace(
        profile="p", kind="partner", expires_in=1, failures=0, waiters=0, state="fresh"
    )
    row: dict[str, Any] = {
        "profile": "p",
        "mfa": True,
        "tokens": 1,
        "states": {"ok": 1},
        "in_flight": 0,
        "queued": 0,
        "evicted": 0,
    }
    for method, snapshot in (("watch_entries", [entry]), ("watch_profiles", [row])):
        probe = Metrics()
        getattr(probe, method)(lambda s=snapshot: s)
        try:
            list(probe.registry.collect())
        except (KeyError, AttributeError, TypeError):
            snapshot = []
        getattr(metrics, method)(lambda s=snapshot: s)
    metrics.count_request("token", 200)
    metrics.count_cache("p", "partner", True)
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            for n in range(1, 8):
                try:
                    wrapper.labels(*(["x"] * n))
                    break
                except ValueError:
                    continue
    out = []
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: list[str] = []
        for sample in family.samples:
            labels += [k for k in sample.labels if k not in labels and k not in ("le",)]
        out.append((name, family.type, family.documentation, tuple(labels)))
    return out


def metrics_page() -> str:
    out = [
        "# Metrics reference",
        "",
        f"{GENERATED} Every family `GET /metrics` can expose, from the broker's Prometheus"
        " registry (`broker/observe/metrics.py`). Labels are profile names, kinds, routes,"
        " statuses, outcomes and fixed state names: never a token, a tenant id or anything a"
        " caller chose. What to watch and alert on: [Metrics](../operate/metrics.md).",
        "",
        "| name | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for name, kind, doc, labels in metric_families():
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        out.append(f"| `{name}` | {kind} | {shown} | {_cell(doc)} |")
    return "\n".join(out) + "\n"


# -- the HTTP API ------------------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    return loaded


def http_page() -> str:
    spec = openapi()
    out = [
        "# HTTP API reference",
        "",
        f"{GENERATED} It renders [`openapi.yaml`](openapi.yaml), the OpenAPI"
        f" {spec['openapi']} description of every route (a test holds it to the broker's"
        " routes and validates it). How to use the API: [HTTP API](../use/http-api.md).",
    ]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            out += ["", f"## `{method.upper()} {path}`", "", op.get("summary", "")]
            if op.get("description"):
                out += ["", op["description"].strip()]
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            params = [p if "$ref" not in p else _ref(spec, p["$ref"]) for p in params]
            if params:
                out += ["", "| parameter | in | required | meaning |", "|---|---|---|---|"]
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'}"
                        f" | {_cell(p.get('description', ''))} |"
                    )
            out += ["", "| status | meaning |", "|---|---|"]
            for status, response in op["responses"].items():
                if "$ref" in response:
                    response = _ref(spec, response["$ref"])
                out.append(f"| {status} | {_cell(response.get('description', ''))} |")
    return "\n".join(out) + "\n"


def _ref(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    found: dict[str, Any] = node
    return found


PAGES = {
    "reference/cli.md": cli_page,
    "reference/config.md": config_page,
    "reference/metrics.md": metrics_page,
    "reference/http-api.md": http_page,
}
