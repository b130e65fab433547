"""MkDocs hooks (mkdocs.yml `hooks:`): add the reference pages that tools/docs_reference.py
makes from the code, so they are built, linked and checked like any page, and never committed."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.docs_reference import PAGES


def on_files(files: Files, config) -> Files:
    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
