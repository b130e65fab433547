"""The [server] table on its own, for the client commands (`token`, `status`, ...): where the
daemon listens and which header it wants. Checked by the schema that `serve` uses, with the
same messages; nothing else of the file is read, so it works for a user who may not read the
profiles' secrets (and cannot resolve the socket group's name: that is `serve`'s business)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.config.errors import ConfigError
from broker.config.problems import report
from broker.config.read import Reader
from broker.config.schema import ServerSection
from broker.config.tomlpos import key_lines


def server_section(table: Any, text: str, file: str | None = None) -> ServerSection:
    """`table`: the document's "server" value; `text`: the document (for line numbers).
    ConfigError lists every problem, as `check-config` would."""
    try:
        return ServerSection.model_validate(table)
    except ValidationError as e:
        r = Reader(file, key_lines(text), {}, Path.cwd())
        report(r, e, ServerSection, at=lambda path: ("server", *path))
        raise ConfigError(sorted(r.problems, key=lambda p: p.line or 0)) from None
