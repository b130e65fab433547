"""`make test-container`: the image built and run for real, with rootful podman.

The pinned official base (python:*-slim-bookworm) cannot be pulled on our machines, Debian's
packages can: so the image is built on a local stand-in (debootstrap bookworm + python3,
python3-venv, from the mirror apt uses here), passed as the PYTHON_IMAGE build argument. The
stand-in and podman's image store are cached outside the repository ($PC_TOKEN_BROKER_CACHE,
default ~/.cache/pc-token-broker/container); delete that folder to start from scratch.

Then, against the sandbox running on the host's loopback:
  1. the broker runs as the image's non-root user, root filesystem read-only, config and
     secret bind-mounted as files, its unix socket in a named volume;
  2. a "tool" container (no network at all) shares that volume and gets a token over the
     socket; a caller whose uid the profile does not allow is refused;
  3. the image's HEALTHCHECK command reports healthy;
  4. SIGTERM stops the broker with exit 0 within the shutdown bound;
  5. nothing was written outside the declared volumes (`podman diff` is empty), and neither
     the secret nor the token appears in the broker's output;
  6. the IMDS sidecar (deploy/kubernetes/imds.yaml): in a network namespace with only
     loopback, shared as a pod's is, the broker answers on 169.254.169.254:80 (the address
     added by the init step, here nsenter from the host; the port from the namespace's
     sysctl) and a tool container with no Azure variable gets a token through azure-identity's
     DefaultAzureCredential, unchanged (the test's own site-packages mounted read-only: the
     image holds no SDK).
Prints the build time, image size and start-to-healthy time. Exit 0 when all holds, 1 otherwise.
Run it as root (rootful podman); missing podman, runc or debootstrap are installed with apt-get.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CACHE = Path(
    os.environ.get("PC_TOKEN_BROKER_CACHE") or Path.home() / ".cache/pc-token-broker/container"
)
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The recipe names the stand-in: change it and a new one is built.
BASE_KEY = hashlib.sha256(f"{SUITE} {' '.join(BASE_PACKAGES)} minbase".encode()).hexdigest()[:12]
BASE_TAG = f"localhost/pc-token-broker-base:{SUITE}-{BASE_KEY}"
IMAGE = "localhost/pc-token-broker:test"
UID, GID = 10001, 10001  # the image's USER
TOOL_UID, STRANGER_UID = 10002, 10003  # the tool (in the broker's group) and a uid not allowed
SHUTDOWN_BOUND = 10.0  # [server] shutdown_timeout's default: in-flight requests get this long
HEALTHY_WITHIN = 120.0  # from `podman run`: vfs copies the whole image first, slow under load
# Without CAP_SYS_RESOURCE (so on these machines) the runtime cannot raise a limit, and podman's
# default RLIMIT_NPROC/NOFILE for rootful containers are above ours: pass limits it can set.
LIMITS = ["--ulimit", "nofile=8192:8192", "--ulimit", "nproc=4096:4096"]
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}  # command: package

# Rootful podman as it works on these machines: runc (crun fails on setrlimit here), vfs
# storage, no systemd (cgroupfs, file events), and a store of our own under the cache folder.
PODMAN = [
    "podman",
    "--root",
    str(CACHE / "storage"),
    "--runroot",
    "/run/pc-token-broker-test/podman",
    "--runtime",
    "runc",
    "--storage-driver",
    "vfs",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "file",
]


class Failed(Exception):
    pass


def say(message: str) -> None:
    print(f"test-container: {message}", flush=True)


def run(*cmd: str, check: bool = True, nice: bool = False, quiet: bool = True, timeout=600):
    """Runs a command; its output is captured (shown only when it fails) unless quiet=False."""
    argv = (["nice"] if nice else []) + list(cmd)
    result = subprocess.run(
        argv, capture_output=quiet, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip()[-3000:] if quiet else ""
        raise Failed(f"{' '.join(cmd[:6])} ... exited {result.returncode}\n{detail}")
    return result


def podman(*args: str, **kw):
    return run(*PODMAN, *args, **kw)


# --- what it needs --------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [c for c in TOOLS if shutil.which(c) is None]
    if os.geteuid() != 0:
        raise Failed(
            "needs root: the container runs under rootful podman"
            + (f"; also missing: {', '.join(missing)}" if missing else "")
        )
    if not missing:
        return
    packages = sorted({TOOLS[c] for c in missing})
    if shutil.which("apt-get") is None:
        raise Failed(f"missing {', '.join(missing)} and no apt-get to install {packages}")
    say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # other apt-get runs on the machine hold the lock
    for cmd in (
        ["apt-get", "update", "-q", *wait],
        ["apt-get", "install", "-y", "-q", *wait, "--no-install-recommends", *packages],
    ):
        if subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode != 0:
            raise Failed(f"`{' '.join(cmd)}` failed: install {' '.join(packages)} by hand")
    still = [c for c in TOOLS if shutil.which(c) is None]
    if still:
        raise Failed(f"still missing after apt-get: {', '.join(still)}")


def debian_mirror() -> str:
    """The mirror apt uses here for SUITE (one-line or deb822 sources), or $DEBIAN_MIRROR."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.split())
                    for k, _, v in (line.partition(":") for line in block.splitlines())
                    if not k.startswith("#") and v
                )
                if SUITE in fields.get("suites", []) and "deb" in fields.get("types", []):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise Failed(f"no apt source for {SUITE} in /etc/apt: set DEBIAN_MIRROR to a Debian mirror")


# --- the stand-in base and the image --------------------------------------------------------


def unmount_under(path: Path) -> None:
    """debootstrap mounts /proc and /sys inside its target; a failed run can leave them."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        run("umount", "-l", point, check=False)


def remove_tree(path: Path) -> None:
    if path.exists():
        unmount_under(path)
        run("rm", "-rf", "--one-file-system", str(path))


def ensure_base() -> None:
    if podman("image", "exists", BASE_TAG, check=False).returncode == 0:
        say(f"stand-in base {BASE_TAG} (cached)")
        return
    tarball = CACHE / f"base-{SUITE}-{BASE_KEY}.tar"
    if not tarball.exists():
        mirror = debian_mirror()
        say(f"building the stand-in base: debootstrap {SUITE} + {', '.join(BASE_PACKAGES)}")
        say(f"  from {mirror} (the mirror apt uses here)")
        rootfs = CACHE / "rootfs.partial"
        remove_tree(rootfs)
        started = time.monotonic()
        try:
            run(
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
                nice=True,
                timeout=1800,
            )
            unmount_under(rootfs)
            # package downloads and indexes are not part of a base image
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / leftover).glob("*"):
                    if item.is_file():
                        item.unlink()
            partial = tarball.with_suffix(".partial")
            run("tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), ".", nice=True)
            partial.rename(tarball)
        finally:
            remove_tree(rootfs)
        say(f"  debootstrap and tar: {time.monotonic() - started:.0f} s")
    podman(
        "import",
        "--change",
        'CMD ["python3"]',
        "--message",
        f"debootstrap {SUITE} minbase + {' '.join(BASE_PACKAGES)}",
        str(tarball),
        BASE_TAG,
        nice=True,
    )
    say(f"stand-in base {BASE_TAG} imported from {tarball}")


def build_image() -> dict:
    """Builds the Dockerfile on the stand-in base, in docker format (OCI drops HEALTHCHECK).
    pip inside the build trusts what the host trusts (here a TLS-inspecting egress proxy has
    its own CA): the host's CA bundle is bind-mounted over the base's own for the RUN steps
    only (Debian's pip reads that bundle), which leaves nothing behind in the image."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    volumes = ["--volume", f"{bundle}:{bundle}:ro"] if Path(bundle).exists() else []
    started = time.monotonic()
    podman(
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={BASE_TAG}",
        *volumes,
        "--tag",
        IMAGE,
        str(ROOT),
        nice=True,
        timeout=1800,
    )
    seconds = time.monotonic() - started
    (info,) = json.loads(podman("image", "inspect", IMAGE).stdout)
    (base,) = json.loads(podman("image", "inspect", BASE_TAG).stdout)
    say(
        f"built {IMAGE} in {seconds:.0f} s: {info['Size'] / 1e6:.0f} MB"
        f" ({base['Size'] / 1e6:.0f} MB of it the stand-in base)"
    )
    return info


# --- the run --------------------------------------------------------------------------------


def start_sandbox(workdir: Path) -> tuple[subprocess.Popen, str, str]:
    """`pc-token-broker sandbox --port 0` on the host's loopback: (process, url, secret). Its
    output goes to a file in the private work folder (it prints the sandbox credential)."""
    output = workdir / "sandbox.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "pc-token-broker"), "sandbox", "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        text = output.read_text(errors="replace")
        url = re.search(r"sandbox listening on (http://\S+)", text)
        secret = re.search(r"export SANDBOX_SECRET=(\S+)", text)
        if url and secret:
            return proc, url.group(1), secret.group(1)
        time.sleep(0.1)  # polling a file with a deadline
    proc.kill()
    raise Failed("the sandbox did not start (no url and credential on its output)")


def sandbox_counts(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sandbox/state", timeout=10) as answer:
        return json.load(answer)["counts"]


def write_mounts(workdir: Path, url: str, secret: str) -> tuple[Path, Path]:
    config = workdir / "config.toml"
    config.write_text(
        f"""[server]
listen = ["unix:/run/pc-token-broker/broker.sock"]
log_format = "json"

[defaults]
authority = "{url}"
generatetoken_url = "{url}/v3/generatetoken"

[profiles.default]
tenant_id = "sandbox.onmicrosoft.com"
client_id = "00000000-0000-4000-8000-00000000c0de"
client_secret_file = "/run/secrets/client-secret"
allowed_uids = [{TOOL_UID}]
"""
    )
    config.chmod(0o644)
    secret_file = workdir / "client-secret"
    secret_file.write_text(secret)
    os.chown(secret_file, UID, GID)
    secret_file.chmod(0o400)
    return config, secret_file


def started_at(stamp: str) -> float:
    """podman's StartedAt ("2026-11-24T17:40:01.123456789Z", nanoseconds) as epoch seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", stamp)
    if not m:
        raise Failed(f"unexpected StartedAt {stamp!r}")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    whole = datetime.fromisoformat(m.group(1) + zone).timestamp()
    return whole + float(m.group(2) or 0)


CHECKS = {"passed": 0}  # checks that held, for the closing line


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)
    CHECKS["passed"] += 1
    say(f"ok: {what}")


def exercise(info: dict, workdir: Path, tag: str) -> None:
    config = info.get("Config") or {}
    check(config.get("User") == f"{UID}:{GID}", f"the image runs as {UID}:{GID}")
    health = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")
    check(
        health == ["CMD", "pc-token-broker", "healthcheck"],
        f"the image's HEALTHCHECK is {health}",
    )
    proc, url, secret = start_sandbox(workdir)
    broker, volume = f"pctb-test-broker-{tag}", f"pctb-test-socket-{tag}"
    try:
        config_file, secret_file = write_mounts(workdir, url, secret)
        podman("volume", "create", volume)
        started, started_wall = time.monotonic(), time.time()
        podman(
            "run",
            "--detach",
            "--name",
            broker,
            "--network",
            "host",  # the sandbox listens on the host's loopback
            "--read-only",
            "--read-only-tmpfs=false",  # not even a tmpfs /run or /tmp to write into
            *LIMITS,
            "--volume",
            f"{config_file}:/etc/pc-token-broker/config.toml:ro",
            "--volume",
            f"{secret_file}:/run/secrets/client-secret:ro",
            "--volume",
            f"{volume}:/run/pc-token-broker",
            IMAGE,
        )
        healthy_at = None
        while time.monotonic() - started < HEALTHY_WITHIN:
            asked = time.time()
            if podman("healthcheck", "run", broker, check=False).returncode == 0:
                healthy_at = time.time()
                break
            state = json.loads(podman("inspect", broker).stdout)[0]["State"]
            if not state.get("Running"):
                raise Failed(f"the broker exited ({state.get('ExitCode')}) before healthy")
            time.sleep(0.2)  # polling podman with a deadline, not waiting in hope
        check(healthy_at is not None, "the image's HEALTHCHECK command reports healthy")
        state = json.loads(podman("inspect", broker).stdout)[0]["State"]
        status = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
        check(status == "healthy", f"podman records the container as {status}")
        process_started = started_at(state["StartedAt"])
        say(
            f"start to healthy: {healthy_at - process_started:.1f} s from the container's start"
            f" ({healthy_at - started_wall:.1f} s from `podman run`, of which the last"
            f" healthcheck took {healthy_at - asked:.1f} s)"
        )
        uid = podman("exec", broker, "id", "-u").stdout.strip()
        check(uid == str(UID), f"the broker's process runs as uid {uid}")
        write = podman("exec", broker, "touch", "/opt/pc-token-broker/x", check=False)
        check(write.returncode != 0, "its root filesystem refuses writes")

        sock = "/run/pc-token-broker/broker.sock"
        got = podman(
            "run",
            "--rm",
            "--network",
            "none",  # the socket is the only way in
            "--read-only",
            "--no-healthcheck",
            *LIMITS,
            "--user",
            f"{TOOL_UID}:{GID}",
            "--volume",
            f"{volume}:/run/pc-token-broker",
            "--entrypoint",
            "pc-token-broker",
            IMAGE,
            *("token", "--socket", sock),
        )
        token = got.stdout.strip()
        check(token.count(".") == 2, "the tool container got a token over the shared socket")
        counts = sandbox_counts(url)
        check(counts.get("partner") == 1, f"from the sandbox on the host (upstream calls {counts})")
        stranger = ("exec", "--user", f"{STRANGER_UID}:{GID}", broker)
        refused = podman(*stranger, "pc-token-broker", "token", "--socket", sock, check=False)
        check(
            refused.returncode != 0 and not refused.stdout.strip(),
            f"uid {STRANGER_UID}, not in allowed_uids, is refused: {refused.stderr.strip()}",
        )

        stopping = time.monotonic()
        podman("kill", "--signal", "TERM", broker)
        code = podman("wait", broker, timeout=60).stdout.strip()
        took = time.monotonic() - stopping
        check(code == "0", f"SIGTERM: exit code {code}")
        check(took <= SHUTDOWN_BOUND, f"stopped {took:.1f} s after SIGTERM (<= {SHUTDOWN_BOUND} s)")
        # podman creates the bind mounts' targets (and so touches their folders): those only
        mounts = {"/etc/pc-token-broker/config.toml", "/run/secrets/client-secret"}
        allowed = mounts | {str(parent) for m in mounts for parent in Path(m).parents}
        changes = [line.split(maxsplit=1) for line in podman("diff", broker).stdout.splitlines()]
        written = [f"{kind} {path}" for kind, path in changes if path not in allowed]
        check(not written, f"nothing written outside the volumes (podman diff: {written})")
        logs = podman("logs", broker).stdout + podman("logs", broker).stderr
        check(
            secret not in logs and token not in logs and "Traceback" not in logs,
            f"no secret, token or traceback in the broker's {len(logs.splitlines())} log lines",
        )
    finally:
        podman("rm", "--force", "--volumes", broker, check=False)
        podman("volume", "rm", "--force", volume, check=False)
        proc.terminate()
        proc.wait(timeout=10)


IMDS_PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start=80"
SANDBOX_PORT = 8080  # inside the pod: the sandbox stands in for Azure AD and Partner Center
# Run in the tool container: no Azure variable in its environment, the SDK finds IMDS itself.
TOOL = """
import base64, json, os, sys
leaked = [k for k in os.environ if k.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_"))]
assert not leaked, leaked
from azure.identity import DefaultAzureCredential
token = DefaultAzureCredential().get_token("https://api.partnercenter.microsoft.com/.default").token
payload = token.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
print(token)
print(claims["aud"])
"""


def _wait_for_output(container: str, pattern: str, within: float = 60) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        logs = podman("logs", container, check=False)
        found = re.search(pattern, logs.stdout + logs.stderr)
        if found:
            return found.group(1)
        time.sleep(0.2)  # polling podman with a deadline, not waiting in hope
    raise Failed(f"{container} printed no {pattern!r} within {within:g} s")


def imds_sidecar(workdir: Path, tag: str) -> None:
    """The pod of deploy/kubernetes/imds.yaml, with podman: the sandbox's container holds the
    network namespace (only loopback, the port sysctl set), the broker and the tool join it
    (`--network container:`), as a pod's containers share one namespace."""
    sandbox, broker = (f"pctb-test-{name}-{tag}" for name in ("sandbox", "imds"))
    pod = ["--network", f"container:{sandbox}"]
    header = secrets.token_urlsafe(32)
    try:
        podman(
            "run", "--detach", "--name", sandbox, "--network", "none", "--sysctl",
            IMDS_PORT_SYSCTL, "--read-only", *LIMITS, "--entrypoint", "pc-token-broker", IMAGE,
            "sandbox", "--port", str(SANDBOX_PORT),
        )  # fmt: skip
        secret = _wait_for_output(sandbox, r"export SANDBOX_SECRET=(\S+)")
        pid = podman("inspect", "--format", "{{.State.Pid}}", sandbox).stdout.strip()
        # The init step of deploy/kubernetes/imds.yaml (an init container with NET_ADMIN).
        run("nsenter", f"--net=/proc/{pid}/ns/net", "ip", "addr", "add",
            "169.254.169.254/32", "dev", "lo")  # fmt: skip
        url = f"http://127.0.0.1:{SANDBOX_PORT}"
        config, secret_file = write_mounts(workdir, url, secret)
        text = (
            config.read_text()
            .replace(
                'listen = ["unix:/run/pc-token-broker/broker.sock"]',
                'listen = ["169.254.169.254:80"]\nallow_remote = true\n'
                'allowed_hosts = ["169.254.169.254", "localhost", "127.0.0.1"]',
            )
            .replace(f"allowed_uids = [{TOOL_UID}]\n", "")
        )
        config.write_text(text + '\n[msi]\nimds = true\nidentity_header_env = "PCTB_HEADER"\n')
        podman(
            "run", "--detach", "--name", broker, *pod, "--read-only",
            "--read-only-tmpfs=false", *LIMITS, "--env", f"PCTB_HEADER={header}",
            "--volume", f"{config}:/etc/pc-token-broker/config.toml:ro",
            "--volume", f"{secret_file}:/run/secrets/client-secret:ro",
            IMAGE,
        )  # fmt: skip
        deadline = time.monotonic() + HEALTHY_WITHIN
        while podman("healthcheck", "run", broker, check=False).returncode != 0:
            running = json.loads(podman("inspect", broker).stdout)[0]["State"].get("Running")
            if time.monotonic() > deadline or not running:
                tail = podman("logs", "--tail", "5", broker, check=False)
                raise Failed(
                    f"the IMDS sidecar is not healthy: {(tail.stdout + tail.stderr)[-800:]}"
                )
            time.sleep(0.2)  # polling podman with a deadline, not waiting in hope
        uid = podman("exec", broker, "id", "-u").stdout.strip()
        check(uid == str(UID), f"the broker binds 169.254.169.254:80 as uid {uid}, no capability")
        site = next(p for p in sys.path if p.endswith("site-packages"))
        got = podman(
            "run", "--rm", *pod, "--read-only", "--no-healthcheck", *LIMITS,
            "--user", f"{TOOL_UID}:{GID}", "--volume", f"{site}:/sdk:ro",
            "--env", "PYTHONPATH=/sdk", "--entrypoint", "/usr/bin/python3", IMAGE, "-c", TOOL,
        )  # fmt: skip
        token, audience = [*got.stdout.strip().splitlines(), "", ""][:2]
        check(
            token.count(".") == 2 and audience == "https://api.partnercenter.microsoft.com",
            "a tool container with no Azure variable got a token through DefaultAzureCredential"
            " from 169.254.169.254",
        )
        logs = podman("logs", broker).stdout + podman("logs", broker).stderr
        check(
            token not in logs and secret not in logs and "Traceback" not in logs,
            "no token, secret or traceback in the IMDS sidecar's log",
        )
    finally:
        for name in (broker, sandbox):
            podman("rm", "--force", name, check=False)


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pc-token-broker-container-"))
    try:
        ensure_tools()
        CACHE.mkdir(parents=True, exist_ok=True)
        ensure_base()
        info = build_image()
        exercise(info, workdir, f"{os.getpid()}")
        imds_sidecar(workdir, f"{os.getpid()}")
    except Failed as e:
        say(f"FAILED: {e}")
        say(f"{CHECKS['passed']} passed, 1 failed")
        return 1
    except subprocess.TimeoutExpired as e:
        say(f"FAILED: {' '.join(map(str, e.cmd))[:200]} did not finish within {e.timeout} s")
        say(f"{CHECKS['passed']} passed, 1 failed")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"passed in {time.monotonic() - started:.0f} s")
    say(f"{CHECKS['passed']} passed, 0 failed")  # the plain closing line CI reads
    return 0


if __name__ == "__main__":
    sys.exit(main())
