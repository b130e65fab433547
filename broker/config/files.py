"""Small file helpers for credentials: bounded reads, atomic replacement keeping the mode."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

READ_LIMIT = 64 * 1024  # bytes: tokens and secrets are a few KiB
CONFIG_LIMIT = 1 << 20  # bytes: a config is a few KiB; a huge one would stall a reload


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's bytes, at most `limit` (ValueError beyond). Opened non-blocking and
    refused unless it is a regular file: a FIFO or a device would block the reader forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def read_text(path: str) -> str:
    """The file's text, stripped; ValueError if empty, larger than READ_LIMIT, not UTF-8 or
    not a regular file."""
    data = read_bounded(path, READ_LIMIT)
    text = data.decode("utf-8").strip()
    if not text:
        raise ValueError("empty")
    return text


def write_private(path: str, text: str) -> None:
    """Create or replace `path` with `text`, mode 0600 from the first instant, atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pc-token-broker-", dir=directory)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomically(path: str, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old or the new content, never half.

    The new file gets the old one's mode (and owner, where permitted) before it is renamed over
    it: a 0600 secret never becomes readable by others, not even for an instant.
    """
    old = os.stat(path)
    _replace(path, text, old, stat.S_IMODE(old.st_mode))


def check_place(path: str) -> os.stat_result | None:
    """Whether `place_secret` may write `path`: ValueError (saying why) if its directory is
    writable by others or it is a symbolic link or not a regular file, OSError if its
    directory is missing; the present file's stat (None: there is none)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.stat(directory).st_mode & stat.S_IWOTH:
        raise ValueError(f"its directory {directory} is writable by others")
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(old.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(old.st_mode) else "not a regular file"
        raise ValueError(f"it is {kind}: name the file itself")
    return old


def place_secret(path: str, text: str) -> None:
    """Create or replace `path` with a secret another program reads (a refresh token that
    `consent` obtained): mode 0600 from its first byte, the old file's owner kept where
    permitted, fsynced, renamed over the old one, the directory fsynced: a reader sees the old
    secret or the new one, never half.

    Refused (ValueError, saying why) when whoever could plant a file there is not to be
    trusted with the secret: a directory writable by others (they could replace the file, or
    plant one whose owner the new file would get), or a `path` that is a symbolic link or not
    a regular file (its target's owner would get the secret). The new file's temporary name
    is mkstemp's (random, O_EXCL: a name planted in advance is never written through)."""
    _replace(path, text, check_place(path), 0o600)


def _replace(path: str, text: str, old: os.stat_result | None, mode: int) -> None:
    """Write `text` to a new file beside `path` (mkstemp: a random name, O_EXCL) with `mode`
    and `old`'s owner where permitted, fsync it, rename it over `path`, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pc-token-broker-", dir=directory)  # 0600
    try:
        os.fchmod(fd, mode)
        if old is not None:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, old.st_uid, old.st_gid)
        with os.fdopen(fd, "wb") as f:
            fd = -1  # the file object owns it now
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
