"""Rewrites imports after modules move (issue 27's core sub-rooms): `python tools/move_modules.py`
rewrites every import and dotted path in broker/, tests/, bench/, tools/, pyproject.toml and the
README and the docs from the old module path to the new one. Idempotent; safe to run again
after a merge."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# old dotted module -> new dotted module
MOVES = {
    "broker.core.schedule": "broker.core.tokens.schedule",
    "broker.core.clock": "broker.core.tokens.clock",
    "broker.core.render": "broker.core.tokens.render",
    "broker.core.details": "broker.core.upstream.details",
    "broker.core.pcformat": "broker.core.upstream.pcformat",
    "broker.core.streams": "broker.core.upstream.streams",
    "broker.core.upstream.credentials": "broker.core.credentials",
    "broker.core.singleflight": "broker.core.cache.singleflight",
    "broker.core.mirror": "broker.core.cache.mirror",
    "broker.core.cache.sources": "broker.core.sources",
    "broker.core.shared": "broker.core.cache.shared",
}


# old file -> new file, where the module path stays (`broker.core.tokens` is now a package that
# re-exports what tokens.py held)
PATHS = {"broker/core/tokens.py": "broker/core/tokens/token.py"}


def rewrite(text: str) -> str:
    for old_file, new_file in PATHS.items():
        text = text.replace(old_file, new_file)
    for old, new in MOVES.items():
        old_pkg, _, old_name = old.rpartition(".")
        new_pkg, _, new_name = new.rpartition(".")

        # `from broker.core import pcformat, schedule`: each name to its new package
        def split_import(
            match: re.Match[str],
            old_name: str = old_name,
            old_pkg: str = old_pkg,
            new_pkg: str = new_pkg,
            new_name: str = new_name,
        ) -> str:
            indent, names = match.group(1), [n.strip() for n in match.group(2).split(",")]
            if old_name not in names:
                return match.group(0)
            rest = [n for n in names if n != old_name]
            lines = [f"{indent}from {new_pkg} import {new_name}"]
            if rest:
                lines.insert(0, f"{indent}from {old_pkg} import {', '.join(rest)}")
            return "\n".join(lines)

        text = re.sub(
            rf"^(\s*)from {re.escape(old_pkg)} import ([\w, ]+)$",
            split_import,
            text,
            flags=re.MULTILINE,
        )
        # dotted uses: imports, strings ("broker.core.schedule.x_retry_delay"), paths
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?=[\s.:,)'\"\]]|$)", new, text, flags=re.M)
        old_path, new_path = old.replace(".", "/"), new.replace(".", "/")
        text = re.sub(rf"(?<![\w/]){re.escape(old_path)}(?=\.py|/)", new_path, text)
    return text


def main() -> None:
    files = [
        *ROOT.glob("broker/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
        *ROOT.glob("tools/**/*.py"),
        ROOT / "pyproject.toml",
        ROOT / "README.md",
        *ROOT.glob("docs/**/*.md"),
    ]
    for path in files:
        if path.name == "move_modules.py" or "__pycache__" in path.parts:
            continue
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
