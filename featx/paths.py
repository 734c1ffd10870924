"""Checks that an output can be written, made before any work starts.

An extraction that runs for an hour and then cannot write its store, or a
``predict`` that extracts every image before finding that ``--out`` is inside
a file, loses the user's time: every command checks its outputs first.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OutputPathError, message, option

__all__ = ["check_writable_file", "check_writable_dir"]


def _first_existing(path: Path) -> Path:
    """*path* or its nearest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _refuse(path: Path, name: str, reason: str) -> OutputPathError:
    return OutputPathError(
        message(f"{option(name)} is not writable ({reason})", got=path, hint=f"choose another {option(name)}")
    )


def _on_read_only_file_system(path: Path) -> bool:
    """Whether *path* is on a file system mounted read-only (where access() says "no permission", EROFS)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _folder_problem(path: Path) -> str | None:
    """Why nothing can be created in folder *path* (or where it would be made), or None."""
    existing = _first_existing(path)
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder"
    if _on_read_only_file_system(existing):
        return f"'{existing}' is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in '{existing}'"
    # Permissions can say yes where the file system says no (/proc, /sys, read-only mounts).
    probe = existing / f".featx-write-test-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create files in '{existing}': {exc.strerror or exc}"
    return None


def check_writable_dir(path: str | os.PathLike, name: str) -> Path:
    """Check that folder *path* exists and is writable, or can be created; create nothing.

    Parameters
    ----------
    path : path
        The folder.
    name : str
        The parameter it came from (``"out"``), for the message.

    Returns
    -------
    Path
        *path*.

    Raises
    ------
    OutputPathError
        With what is in the way: a file, a read-only folder, a special file system.
    """
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise _refuse(path, name, problem)
    return path


def check_writable_file(path: str | os.PathLike, name: str) -> Path:
    """Check that file *path* can be created or replaced; create nothing (see :func:`check_writable_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise _refuse(path, name, "it is a folder, a file name is needed")
    if path.exists() and _on_read_only_file_system(path):
        raise _refuse(path, name, f"'{path}' is on a read-only file system")
    if path.exists() and not os.access(path, os.W_OK):
        raise _refuse(path, name, "the file is read-only")
    problem = _folder_problem(path.parent)
    if problem:
        raise _refuse(path, name, problem)
    return path
