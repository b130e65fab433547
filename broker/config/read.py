"""What the schema cannot check alone: secrets from files and the environment, `${VAR}` in paths,
user and group names, plain-http upstreams. `Reader` collects every problem (never an early exit)
with its key path and line, so `check-config` reports them all at once."""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config.errors import Problem
from broker.config.files import read_bounded
from broker.config.listen import is_loopback_host
from broker.config.secret import Secret, UnreadSecret

SECRET_FILE_LIMIT = 64 * 1024  # bytes; a secret file larger than this is a mistake
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Reader:
    """Collects problems and warnings while reading one document."""

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
        problem = Problem(".".join(path), message, self.file, line)
        if problem not in self.problems:  # a [defaults] key is checked for every profile
            self.problems.append(problem)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def ids(self, values: tuple[int | str, ...], path: tuple[str, ...], kind: str) -> list[int]:
        """User or group ids from numbers or names (names resolved now, at load)."""
        import grp
        import pwd

        ids = []
        for item in values:
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

    def url(self, text: str, path: tuple[str, ...], *, allow_insecure: bool) -> None:
        """An upstream URL: plain http only to a loopback host, unless `allow_insecure`
        (`allow_insecure_upstream = true`; then a warning): it would carry secrets and bearers
        in clear."""
        if not text.startswith("http://") or is_loopback_url(text):
            return
        if not allow_insecure:
            self.problem(
                path,
                f"plain http to a non-loopback host ({text!r}) would carry secrets and "
                "tokens in clear; use https, or set allow_insecure_upstream = true",
            )
            return
        self.warn(f"{'.'.join(path)}: plain http to a non-loopback host")

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
        self, values: Mapping[str, Any], path: tuple[str, ...], name: str, *, required: bool
    ) -> tuple[Secret | None, str]:
        """The secret `name` from exactly one of `name` (inline), `name_file`, `name_env`, of
        the keys a table set (`values`, already checked to be non-empty strings)."""
        given = [k for k in (name, f"{name}_file", f"{name}_env") if values.get(k) is not None]
        if len(given) > 1:
            self.problem((*path, given[1]), f"give only one of {', '.join(given)}")
            return None, ""
        if not given:
            if required:
                self.problem((*path, f"{name}_file"), f"required: {name}_file or {name}_env")
            return None, ""
        key = given[0]
        where = (*path, key)
        raw = values[key]
        if key == name:
            self._inline_secret_readable(where)
            return (raw if isinstance(raw, Secret) else Secret(str(raw))), "inline"
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
            self.warn(
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
            self.warn(
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
    return is_loopback_host(host)


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
