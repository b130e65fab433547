"""Prints the installed distributions whose version differs from uv.lock's: `make test-latest`
runs it in .venv-latest, so its log says which newer releases the suite was run against.

    .venv-latest/bin/python tools/lock_diff.py uv.lock
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main(lock_path: str) -> int:
    lock = tomllib.loads(Path(lock_path).read_text())
    locked: dict[str, set[str]] = {}
    for package in lock.get("package", []):
        if "version" in package:
            locked.setdefault(canonical(package["name"]), set()).add(package["version"])
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    rows = []
    for name, version in sorted(installed.items()):
        want = locked.get(name)
        if want is None:
            rows.append(f"  {name}: {version} (not in the lock)")
        elif version not in want:
            rows.append(f"  {name}: lock {' / '.join(sorted(want))} -> latest {version}")
    if rows:
        print(f"newest releases that differ from {lock_path} ({len(rows)}):")
        print("\n".join(rows))
    else:
        print(f"the newest releases are the ones in {lock_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "uv.lock"))
