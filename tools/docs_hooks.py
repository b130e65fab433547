"""MkDocs hooks (mkdocs.yml `hooks:`): add the reference pages that tools/docs_reference.py
makes from the code, so they are built, linked and checked like any page. What is committed at
those paths is a stub saying so (links to them work on GitHub); the generated page replaces it."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.docs_reference import PAGES


def on_files(files: Files, config) -> Files:
    for uri, make in PAGES.items():
        stub = files.get_file_from_path(uri)
        if stub is not None:
            files.remove(stub)
        files.append(File.generated(config, uri, content=make()))
    return files
