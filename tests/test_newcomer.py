"""What a newcomer reading a fresh clone relies on: the help and the docs name every command
that finds the daemon; the README's try-out says where each step runs and how to clean up."""

from __future__ import annotations

import re

from broker.cli.manual import WHERE
from broker.cli.parser import parser_and_commands
from tests.support import ROOT


def _daemon_commands() -> set[str]:
    """The commands that take --url: those that find the daemon."""
    _, commands = parser_and_commands()
    return {name for name, p in commands.items() if "--url" in p.format_usage()}


def test_the_finding_the_daemon_line_names_every_command_that_does() -> None:
    wanted = _daemon_commands()
    assert {"token", "tenants", "doctor"} <= wanted
    listed = set(re.search(r"finding the daemon \(([^)]*)\)", WHERE).group(1).split(", "))  # type: ignore[union-attr]
    assert listed == wanted
    text = (ROOT / "docs/use/cli.md").read_text()
    section = text[text.index("## Finding the daemon") :]
    sentence = section[: section.index("first match wins")]
    assert set(re.findall(r"`([a-z-]+)`", sentence)) == wanted


def test_the_tryout_says_where_it_runs_and_unsets_what_it_exported() -> None:
    """The install runs in the clone, the commands in an empty directory, and what the try-out
    exports (its own export, and msi-env's lines) is unset at the end."""
    for doc in ("README.md", "docs/try/index.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert "In the clone, install" in text and "cd /tmp/try" in text, doc
        tryout = text[text.index("doc-test: tryout") :]
        exported = set(re.findall(r"export ([A-Z_]+)=", tryout[: tryout.index("```", 20)]))
        exported |= {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}  # `msi-env` without a profile
        unset = re.search(r"unset ([A-Z_ ]+)`", tryout)
        assert unset and exported <= set(unset.group(1).split()), doc
