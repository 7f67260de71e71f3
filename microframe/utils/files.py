"""Small file helpers."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a part.

    The text goes to a temporary file in the same directory (created if missing), which then
    replaces ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class UnsafePath(OSError):
    """A cache path that another local user could have written (see :func:`private_directory`)."""


def user_temp_directory(name: str) -> Path:
    """``<temp dir>/<name>-<uid>``: a directory of the temporary directory for this user alone
    (use it through :func:`private_directory` with the temporary directory as ``trusted``)."""
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    return Path(tempfile.gettempdir()) / f"{name}-{uid}"


def private_directory(path: Path, trusted: Path | None = None) -> Path:
    """Make ``path`` a directory that only this user writes in, and return it.

    Every level below ``trusted`` (default: the parent of ``path``) is created with mode 0700
    when missing, and must then be a real directory (not a symlink) owned by this user and not
    writable by everyone; otherwise :class:`UnsafePath` is raised. A cache kept in the shared
    temporary directory is read back as this service's own state (the settings it starts with,
    the instances it calls), so a directory made beforehand by another local user must not be
    used: they could have put any file in it.
    """
    import stat

    if trusted is None:
        path.parent.mkdir(parents=True, exist_ok=True)  # where the user said: theirs to secure
        trusted = path.parent
    if os.name != "posix":  # no owners to compare
        path.mkdir(parents=True, exist_ok=True)
        return path
    levels = [path, *[p for p in path.parents if p != trusted and trusted in p.parents]]
    for level in reversed(levels):
        with contextlib.suppress(FileExistsError):
            level.mkdir(mode=0o700)
        info = os.lstat(level)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(f"{level} is not a directory")
        if info.st_uid != os.geteuid():
            raise UnsafePath(
                f"{level} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
            )
        if info.st_mode & 0o002:
            raise UnsafePath(f"{level} is writable by every user (mode {info.st_mode & 0o777:o})")
    return path


def read_private_text(path: Path, trusted: Path | None = None) -> str:
    """The text of ``path``, a file of this user's in a :func:`private_directory` below
    ``trusted``; :class:`UnsafePath` when the file or a directory could be another user's
    (FileNotFoundError when it does not exist)."""
    private_directory(path.parent, trusted)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, encoding="utf-8") as f:
        info = os.fstat(f.fileno())
        if os.name == "posix" and info.st_uid != os.geteuid():
            raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to this user")
        return f.read()
