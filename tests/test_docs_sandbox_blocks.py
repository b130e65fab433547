"""The documentation's blocks that start their own sandbox and broker, run as written with the
try-out's substitutions (the sandbox on a free port, the broker on another), in an empty
directory, each line's exit status printed: docs/use/customer-tenants.md's (`customers`) and
docs/operate/doctor.md's (`doctor`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.support import free_port
from tests.test_readme import _TRYOUT_PRELUDE, _clean_env, marked


async def _run(name: str, cwd: Path) -> tuple[list[str], str, str]:
    """The block's lines' exit statuses, stdout, stderr; the broker and the sandbox stopped."""
    (block,) = marked(name)
    port = free_port()
    text = block.text.replace(
        "pc-token-broker sandbox ", f"pc-token-broker sandbox --port 0 --broker-port {port} "
    ).replace("8721", str(port))
    prelude = _TRYOUT_PRELUDE.replace("set -euo pipefail", "set -uo pipefail")  # exits shown
    assert prelude != _TRYOUT_PRELUDE
    script = prelude + "".join(f'{line}\necho "exit $?"\n' for line in text.splitlines())
    env = {**_clean_env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 120)
    out, err = out_b.decode(), err_b.decode()
    assert out.splitlines()[-2:] == ["broker exited 0", "sandbox stopped"], out + err
    return [line for line in out.splitlines() if line.startswith("exit ")], out, err


async def test_the_customer_tenant_examples_run_against_the_sandbox(tmp_path: Path) -> None:
    exits, out, err = await _run("customers", tmp_path)
    assert exits == ["exit 0"] * len(exits) and len(exits) == 11, out + err
    assert out.count('"access_token"') == 2 and "51ed8922-baf1-52fc-8d06-0a377b2ceb05  ok" in out
    assert '"invalidated": true, "tokens_dropped": 2' in out, out
    lines = out.splitlines()
    assert 1.7e9 < int(lines[lines.index("broker exited 0") - 2]) < 2.2e9, out  # the SDK's


async def test_the_doctor_block_runs_against_the_sandbox(tmp_path: Path) -> None:
    exits, out, err = await _run("doctor", tmp_path)
    assert exits == ["exit 0"] * 4 + ["exit 1"] * 3, out + err
    assert "65001" in err  # the token's refusal
    assert out.count("consent_required (AADSTS65001)") == 2, out  # doctor, twice
    assert out.count("/adminconsent?client_id=") == 2, out
