"""The broker's error types. Imports nothing from `broker`.

Messages are built from safe parts only (statuses, error codes, key paths): never from a token,
a secret or a raw request. Upstream descriptions are passed through the redactor before they get
here (see `broker.redact`).
"""

from __future__ import annotations

from dataclasses import dataclass


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem: the key path, what is wrong, and where (when known)."""

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return f"{where}{self.path}: {self.message}"


class ConfigError(BrokerError):
    """A configuration that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))
