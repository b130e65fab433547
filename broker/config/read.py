"""Reading one TOML document while collecting problems: typed values or None, never an early
exit, so `check-config` reports every problem at once with its key path and line."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config.errors import Problem
from broker.config.files import read_bounded
from broker.config.secret import Secret, UnreadSecret

SECRET_FILE_LIMIT = 64 * 1024  # bytes; a secret file larger than this is a mistake
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reader:
    """Collects problems while reading one document; values come back typed or as None."""

    def __init__(
        self,
        file: str | None,
        lines: dict[tuple[str, ...], int],
        env: Mapping[str, str],
        base_dir: Path,
    ) -> None:
        self.file, self.lines, self.env, self.base_dir = file, lines, env, base_dir
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        # Offline: no secret file, environment variable or host database is consulted; the
        # config's own syntax, types and keys are still checked in full.
        self.offline = False

    def problem(self, path: tuple[str, ...], message: str) -> None:
        line = None
        for n in range(len(path), 0, -1):  # the key's own line, else its table's
            line = self.lines.get(path[:n])
            if line:
                break
        self.problems.append(Problem(".".join(path), message, self.file, line))

    def table(self, value: Any, path: tuple[str, ...], allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, "must be a table")
            return {}
        for key in sorted(set(value) - allowed):
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
            if close:
                self.problem((*path, key), f"unknown key; did you mean {close[0]!r}?")
            else:
                self.problem((*path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def number(self, value: Any, path: tuple[str, ...], low: float, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"must be a number, not {type(value).__name__}")
            return None
        if not low <= value <= high:
            self.problem(path, f"must be between {low:g} and {high:g}, not {value:g}")
            return None
        return float(value)

    def string(
        self, value: Any, path: tuple[str, ...], *, choices: tuple[str, ...] = ()
    ) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(path, "must be a non-empty string")
            return None
        if choices and value not in choices:
            self.problem(path, f"must be one of {', '.join(choices)}, not {value!r}")
            return None
        return value

    def whole(self, value: Any, path: tuple[str, ...], low: int, high: int) -> int | None:
        number = self.number(value, path, low, high)
        if number is not None and number != int(number):
            self.problem(path, "must be a whole number")
            return None
        return None if number is None else int(number)

    def mode(self, value: Any, path: tuple[str, ...]) -> int | None:
        """A file mode written as an octal string ("0660"); never world-accessible."""
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
            self.problem(path, 'must be an octal mode string such as "0660"')
            return None
        mode = int(value, 8)
        if mode & 0o007:
            self.problem(path, f"{value} would let any local user in; others get no access")
            return None
        return mode

    def ids(self, value: Any, path: tuple[str, ...], kind: str) -> list[int]:
        """User or group ids from numbers or names (names resolved now, at load)."""
        import grp
        import pwd

        if not isinstance(value, list) or not all(
            isinstance(v, int | str) and not isinstance(v, bool) for v in value
        ):
            self.problem(path, f"must be a list of {kind} ids or names")
            return []
        ids = []
        for item in value:
            if isinstance(item, int):
                ids.append(item)
                continue
            if self.offline:  # names belong to the host the broker will run on
                continue
            try:
                ids.append(
                    pwd.getpwnam(item).pw_uid if kind == "user" else grp.getgrnam(item).gr_gid
                )
            except KeyError:
                self.problem(path, f"no {kind} named {item!r} on this host")
        return ids

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool | None:
        if not isinstance(value, bool):
            self.problem(path, "must be true or false")
            return None
        return value

    def strings(self, value: Any, path: tuple[str, ...]) -> list[str] | None:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.problem(path, "must be a non-empty list of strings")
            return None
        return value

    def url(self, value: Any, path: tuple[str, ...], *, allow_insecure: bool = False) -> str | None:
        """An upstream URL. Plain http only to a loopback host, unless `allow_insecure`
        (`allow_insecure_upstream = true`): it would carry secrets and bearers in clear."""
        text = self.string(value, path)
        if text is None:
            return None
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
            self.problem(path, f"must be an http(s) URL, not {text!r}")
            return None
        if text.startswith("http://") and not is_loopback_url(text):
            if not allow_insecure:
                self.problem(
                    path,
                    f"plain http to a non-loopback host ({text!r}) would carry secrets and "
                    "tokens in clear; use https, or set allow_insecure_upstream = true",
                )
                return None
            self.warnings.append(f"{'.'.join(path)}: plain http to a non-loopback host")
        return text

    def expand(self, value: str, path: tuple[str, ...]) -> Path | None:
        missing = [m for m in _VAR.findall(value) if m not in self.env]
        if missing and self.offline:  # described as written: the variable is the host's
            return Path(_VAR.sub(lambda m: self.env.get(m.group(1), m.group(0)), value))
        if missing:
            self.problem(path, f"environment variable {missing[0]} is not set")
            return None
        expanded = Path(_VAR.sub(lambda m: self.env[m.group(1)], value))
        return expanded if expanded.is_absolute() else self.base_dir / expanded

    def secret(
        self, table: dict[str, Any], path: tuple[str, ...], name: str, *, required: bool
    ) -> tuple[Secret | None, str]:
        """The secret `name` from exactly one of `name`, `name_file`, `name_env`."""
        given = [k for k in (name, f"{name}_file", f"{name}_env") if k in table]
        if len(given) > 1:
            self.problem((*path, given[1]), f"give only one of {', '.join(given)}")
            return None, ""
        if not given:
            if required:
                self.problem((*path, f"{name}_file"), f"required: {name}_file or {name}_env")
            return None, ""
        key = given[0]
        where = (*path, key)
        raw = self.string(table[key], where)
        if raw is None:
            return None, ""
        if key == name:
            self._inline_secret_readable(where)
            return Secret(raw), "inline"
        if self.offline:
            if key.endswith("_env"):
                return UnreadSecret(), f"env {raw}"
            file = self.expand(raw, where)
            return UnreadSecret(), f"file {file}"
        if key.endswith("_env"):
            if raw not in self.env or not self.env[raw].strip():
                self.problem(where, f"environment variable {raw} is not set or empty")
                return None, ""
            return Secret(self.env[raw].strip()), f"env {raw}"
        file = self.expand(raw, where)
        if file is None:
            return None, ""
        value = read_secret_file(file)
        if isinstance(value, Problem):
            self.problem(where, value.message)
            return None, ""
        self.private_file(file, where)
        return value, f"file {file}"

    def private_file(self, file: Path, path: tuple[str, ...]) -> None:
        """Warn when a file holding a secret may be read by its group or by others."""
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except OSError:
            return
        if mode & 0o044:
            who = "others" if mode & 0o004 else "its group"
            self.warnings.append(
                f"{'.'.join(path)}: {file} holds a secret and {who} can read it "
                f"(mode {mode:04o}); chmod 600 {file}"
            )

    def _inline_secret_readable(self, path: tuple[str, ...]) -> None:
        if self.file is None:
            return
        try:
            mode = os.stat(self.file).st_mode
        except OSError:
            return
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            self.warnings.append(
                f"{'.'.join(path)}: inline secret in {self.file}, which others can read "
                f"(mode {stat.S_IMODE(mode):04o}); use a *_file with mode 0600, or chmod 600"
            )


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine: localhost, 127.0.0.0/8 or ::1 (its whole host,
    not a prefix: `http://127.0.0.1.evil.example` is not loopback)."""
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path) -> Secret | Problem:
    """A secret from a file: stripped of surrounding whitespace, bounded, non-empty."""
    try:
        data = read_bounded(path, SECRET_FILE_LIMIT)
    except OSError as e:
        return Problem("", f"cannot read {path}: {e.strerror or e.__class__.__name__}")
    except ValueError as e:  # too large, or a FIFO or device (reading would block)
        return Problem("", f"{path}: {e}")
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return Problem("", f"{path} is empty")
    return Secret(text)
