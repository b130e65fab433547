"""The container image and the sidecar examples keep their promises, parsed and checked here.
`make test-container` (tests/container_run.py) builds the image and runs it for real with
podman; Kubernetes and the compose file are not run (the README says so)."""

from __future__ import annotations

import re
import shlex

import yaml

from broker.config.load import DEFAULT_PATH, parse_settings
from tests.support import ROOT


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM" and stages[-1] and any(i == "FROM" for i, _ in stages[-1]):
            stages.append([])
        stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_pinned_non_root_with_healthcheck() -> None:
    """Two stages on a version-pinned slim Python; the final one copies the venv, runs as a
    numeric non-root uid, checks health with the broker's CLI and has no curl or compiler."""
    stages = dockerfile_stages()
    assert len(stages) == 2
    args = dict(a.split("=", 1) for i, a in stages[0] if i == "ARG")
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", args["PYTHON_IMAGE"])
    final = stages[-1]
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    assert ("COPY", "--from=build /opt/pc-token-broker /opt/pc-token-broker") in final
    user = next(a for i, a in final if i == "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) != 0
    healthcheck = next(a for i, a in final if i == "HEALTHCHECK")
    assert '["pc-token-broker", "healthcheck"]' in healthcheck
    assert next(a for i, a in final if i == "ENTRYPOINT") == '["pc-token-broker"]'
    env = " ".join(a for i, a in final if i == "ENV")
    # the default config path, not named: a named config must be readable, and a tool container
    # running `pc-token-broker token --socket` from this image has none (make test-container)
    assert "PC_TOKEN_BROKER_CONFIG" not in env
    assert DEFAULT_PATH == "/etc/pc-token-broker/config.toml"
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written under a read-only root
    final_runs = " ".join(a for i, a in final if i == "RUN")
    for tool in ("curl", "wget", "gcc", "build-essential", "apt-get install"):
        assert tool not in final_runs, tool
    # a Debian base (the stand-in `make test-container` builds on) has python3 and no `python`
    all_runs = " ".join(a for stage in stages for i, a in stage if i == "RUN")
    assert "python3 -m venv" in all_runs and not re.search(r"(^|[\s;&|])python\s", all_runs)
    # the volumes' mount points belong to the broker's uid: a fresh volume can hold its socket
    volumes = next(a for i, a in final if i == "VOLUME")
    for path in re.findall(r'"([^"]+)"', volumes):
        assert re.search(rf"install -d -o {uid} -g {gid} [^&]*{re.escape(path)}", final_runs), path
    # the last USER comes after every RUN: nothing runs as root at the end
    order = [i for i, _ in final]
    assert max(n for n, i in enumerate(order) if i == "RUN") < order.index("USER")


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    """Only the lock's export, pyproject.toml, README.md and broker/ reach the build: no .venv,
    .git or secrets."""
    rules = [
        r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")
    ]
    assert rules[0] == "*"
    assert {"!requirements.txt", "!pyproject.toml", "!README.md", "!broker/"} <= set(rules)


def test_the_image_installs_exactly_the_lock_with_every_hash_checked() -> None:
    """The build stage installs requirements.txt (uv.lock's export; `make lint` checks that it
    is) with --require-hashes and wheels only, then the broker with no dependency resolution
    and no build isolation: nothing reaches the image that the lock did not name."""
    build = dockerfile_stages()[0]
    assert any(i == "COPY" and "requirements.txt" in a.split() for i, a in build)
    (run,) = [a for i, a in build if i == "RUN" and "pip install" in a]
    assert "--require-hashes --only-binary :all: -r requirements.txt" in " ".join(run.split())
    assert "--no-deps --no-build-isolation ." in " ".join(run.split())
    pins = re.findall(
        r"^([A-Za-z0-9_.-]+)==([^\s;]+)(?: ;[^\\\n]*)?((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)",
        (ROOT / "requirements.txt").read_text(),
        re.MULTILINE,
    )
    names = {name.lower() for name, _, _ in pins}
    assert {"aiohttp", "redis", "structlog", "pyjwt", "setuptools"} <= names, names
    requirement_lines = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert len(requirement_lines) == len(pins)  # every requirement pinned, with its hashes


def test_kubernetes_pod_runs_the_broker_as_a_native_sidecar(tmp_path) -> None:
    """An init container with restartPolicy Always, probes on /readyz and /healthz (through the
    CLI), the secret as a mounted file, the socket shared through an emptyDir."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/pod.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    pod = kinds["Pod"]["spec"]
    (broker,) = pod["initContainers"]
    assert broker["restartPolicy"] == "Always"
    assert broker["readinessProbe"]["exec"]["command"] == ["pc-token-broker", "healthcheck"]
    assert broker["livenessProbe"]["exec"]["command"][-1] == "--live"
    assert broker["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["socket"] and "secret" in volumes["secret"]
    mounts = {m["name"]: m["mountPath"] for m in broker["volumeMounts"]}
    tool_mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
    assert tool_mounts["socket"] == mounts["socket"] and "secret" not in tool_mounts
    config = kinds["ConfigMap"]["data"]["config.toml"]
    (tmp_path / "client-secret").write_text("k8s-secret-value")
    settings = parse_settings(config.replace(mounts["secret"], str(tmp_path)), env={})
    assert [str(x) for x in settings.server.listen] == [f"unix:{mounts['socket']}/broker.sock"]
    assert settings.profiles["default"].secret_source == f"file {tmp_path}/client-secret"


def test_compose_tool_shares_the_broker_network_namespace(tmp_path) -> None:
    """The tool joins the broker's network namespace and waits for it to be healthy; the
    broker's config is valid and listens on loopback only."""
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert services["tool"]["network_mode"] == "service:broker"
    assert services["tool"]["depends_on"]["broker"]["condition"] == "service_healthy"
    assert services["broker"]["read_only"] is True
    assert "ports" not in services["broker"]
    text = (ROOT / "deploy/compose.config.toml").read_text()
    (tmp_path / "client-secret").write_text("compose-secret-value")
    settings = parse_settings(text.replace("/run/secrets", str(tmp_path)), env={})
    assert all(listen.is_loopback for listen in settings.server.listen)
    command = shlex.join(services["tool"]["command"])
    assert "127.0.0.1:8721/v1/token" in command and "Metadata" in command


def _shared_files(tmp_path, names) -> None:
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)


def test_compose_fleet_shares_one_redis(tmp_path) -> None:
    """Redis and two brokers from one definition, each with the same config, key and Redis
    password as secrets; each tool joins its own broker; the config is valid and names the
    redis service."""
    compose = yaml.safe_load((ROOT / "deploy/compose.fleet.yaml").read_text())
    services = compose["services"]
    brokers = [s for n, s in services.items() if n.startswith("broker-")]
    assert len(brokers) >= 2 and all(b == brokers[0] for b in brokers)
    broker = brokers[0]
    assert broker["read_only"] is True and "ports" not in broker
    assert {"client-secret", "shared.key", "redis-password"} <= set(broker["secrets"])
    assert broker["depends_on"]["redis"]["condition"] == "service_healthy"
    redis_command = " ".join(services["redis"]["command"])
    assert "--requirepass" in redis_command and "/run/secrets/redis-password" in redis_command
    assert "ports" not in services["redis"]  # reachable by the brokers only
    for name in ("tool-a", "tool-b"):
        joined = services[name]["network_mode"].removeprefix("service:")
        assert joined in services and services[joined] is not None
    assert {s.get("network_mode") for n, s in services.items() if n.startswith("tool")} == {
        "service:broker-a",
        "service:broker-b",
    }
    _shared_files(
        tmp_path,
        {"client-secret": b"x", "shared.key": bytes(range(32)), "redis-password": b"pw"},
    )
    text = (ROOT / "deploy/compose.fleet.config.toml").read_text()
    settings = parse_settings(text.replace("/run/secrets", str(tmp_path)), env={})
    assert settings.shared is not None and settings.shared.redis_url == "redis://redis:6379/0"
    assert settings.shared.password is not None and settings.shared.password.reveal() == "pw"
    mounted = {f"/run/secrets/{s}" for s in broker["secrets"]}
    assert {"/run/secrets/shared.key", "/run/secrets/redis-password"} <= mounted


def test_kubernetes_fleet_deployment_shares_one_redis(tmp_path) -> None:
    """A Deployment of several pods, each with the broker as a native sidecar, all naming the
    Redis Service; the shared key and Redis password come from one Secret, never world-
    readable; the config is valid."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/fleet.yaml").read_text()))
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    tools = by_name[("Deployment", "partner-tools")]["spec"]
    assert tools["replicas"] >= 2
    pod = tools["template"]["spec"]
    (broker,) = pod["initContainers"]
    assert broker["restartPolicy"] == "Always"
    assert broker["readinessProbe"]["exec"]["command"] == ["pc-token-broker", "healthcheck"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shared_secret = volumes["shared"]["secret"]
    assert shared_secret["defaultMode"] & 0o007 == 0
    mounts = {m["name"]: m["mountPath"] for m in broker["volumeMounts"]}
    service = by_name[("Service", "pc-token-broker-redis")]
    redis = by_name[("Deployment", "pc-token-broker-redis")]["spec"]
    assert redis["replicas"] == 1
    assert service["spec"]["selector"] == redis["template"]["metadata"]["labels"]
    assert "--requirepass" in " ".join(redis["template"]["spec"]["containers"][0]["command"])
    config = by_name[("ConfigMap", "pc-token-broker-fleet-config")]["data"]["config.toml"]
    _shared_files(
        tmp_path,
        {"client-secret": b"x", "shared.key": bytes(range(32)), "redis-password": b"pw"},
    )
    text = config.replace(mounts["shared"], str(tmp_path)).replace(mounts["secret"], str(tmp_path))
    settings = parse_settings(text, env={})
    assert settings.shared is not None
    host = settings.shared.redis_url.split("://")[1].split(":")[0]
    assert host == service["metadata"]["name"]
    assert settings.shared.key_file == f"{tmp_path}/shared.key"


def test_kubernetes_imds_sidecar_answers_on_the_metadata_address(tmp_path) -> None:
    """deploy/kubernetes/imds.yaml: the broker's config is valid and listens on
    169.254.169.254:80 with the IMDS route on; the one privileged step is an init container
    with NET_ADMIN only; the port comes from the pod's namespaced sysctl, not a capability."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/imds.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    pod = kinds["Pod"]["spec"]
    address, broker = pod["initContainers"]
    assert address["command"] == ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]
    assert address["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert broker["restartPolicy"] == "Always"
    assert broker["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.ip_unprivileged_port_start": "80"}
    (tool,) = pod["containers"]
    assert "env" not in tool and "169.254.169.254" in tool["command"][-1]
    config = kinds["ConfigMap"]["data"]["config.toml"]
    (tmp_path / "client-secret").write_text("k8s-secret-value")
    mounts = {m["name"]: m["mountPath"] for m in broker["volumeMounts"]}
    settings = parse_settings(
        config.replace(mounts["secret"], str(tmp_path)),
        env={"PC_TOKEN_BROKER_IDENTITY_HEADER": "x" * 32},
    )
    assert [str(x) for x in settings.server.listen] == ["169.254.169.254:80"]
    assert settings.msi is not None and settings.msi.imds
    assert "169.254.169.254" in settings.server.allowed_hosts
