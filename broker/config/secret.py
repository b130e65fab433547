"""`Secret`: a string that does not print. Held in memory only; `reveal()` at the point of use."""

from __future__ import annotations

import hmac
from typing import NoReturn


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str | bytes) -> bool:
        """Constant-time comparison, for access keys and identity headers."""
        if isinstance(candidate, str):
            candidate = candidate.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self._value.encode("utf-8"), candidate)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> NoReturn:  # never pickled into a file or a subprocess by accident
        raise TypeError("a Secret cannot be pickled")


class UnreadSecret(Secret):
    """Stands for a secret an offline read did not look at; using it is a bug, loudly."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("")

    def reveal(self) -> str:
        raise RuntimeError("this secret was not read (the config was loaded offline)")
