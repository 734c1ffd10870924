"""Checks that an output can be written, made before any work starts.

An extraction that runs for an hour and then cannot write its store, or a
``predict`` that extracts every image before finding that ``--out`` is inside
a file, loses the user's time: every command checks its outputs first.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputPathError, message, option

__all__ = [
    "check_writable_file",
    "check_writable_dir",
    "check_output_file",
    "check_run_folder",
    "same_file_as",
    "temporary_path",
    "remove_stale_temporaries",
]


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


def check_writable_file(path: str | os.PathLike, name: str, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that file *path* can be created or replaced; create nothing (see :func:`check_writable_dir`).

    featx only ever writes regular files it creates: *path* must not be ``-``,
    a device, a FIFO, a socket or a symbolic link (``/dev/stdout`` replaced by
    a regular file would break it for every process), nor the same file, by
    device and inode, as any of *inputs* (the files the command reads).
    """
    if os.fspath(path) == "-":
        raise _refuse(
            Path(path), name,
            "'-' is not a file name: featx writes files, never standard output through --out",
        )
    path = Path(path)
    problem = _special_file_problem(path)
    if problem:
        raise _refuse(path, name, problem)
    clash = same_file_as(path, inputs)
    if clash is not None:
        raise _refuse(path, name, f"it is the input '{clash}' of this command, which writing would destroy")
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


def _special_file_problem(path: Path) -> str | None:
    """Why *path*, if it exists, is not a regular file featx may replace, or None."""
    try:
        link = path.lstat()
    except OSError:
        return None  # nothing there (or nothing we can see): created new
    if stat.S_ISLNK(link.st_mode):
        try:
            target = os.stat(path)  # follows the link (also /proc/self/fd's links to pipes and terminals)
        except OSError:
            return "it is a symbolic link to nothing"
        if stat.S_ISREG(target.st_mode):
            return f"it is a symbolic link (to '{os.path.realpath(path)}'): pass the file itself to replace it"
        return f"it is a symbolic link to a {_kind(target.st_mode)}, not a regular file; featx writes only regular files"
    if stat.S_ISDIR(link.st_mode) or stat.S_ISREG(link.st_mode):
        return None  # a folder is refused by the caller with its own words
    return f"it is a {_kind(link.st_mode)}, not a regular file; featx writes only regular files"


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"), (stat.S_ISREG, "regular file")):
        if test(mode):
            return kind
    return "special file"


def same_file_as(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path | None:
    """The first of *inputs* that is the file *path* (same device and inode: links and other names included), or None."""
    try:
        mine = os.stat(path)
    except OSError:
        return None  # *path* does not exist: it is nobody's input
    for candidate in inputs:
        try:
            theirs = os.stat(candidate)
        except (OSError, TypeError, ValueError):
            continue  # a URL, a pattern, a file that is not there: not this file
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            return Path(candidate)
    return None


def check_output_file(
    path: str | os.PathLike, name: str, *, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
) -> Path:
    """:func:`check_writable_file`, and refuse an existing *path* unless *overwrite*.

    Temporary files that dead runs left beside *path* are removed (the next
    run to the same path cleans up after a ``kill -9``).
    """
    path = check_writable_file(path, name, inputs=inputs)
    if path.exists() and not overwrite:
        raise OutputPathError(
            message(
                f"{option(name)} already exists",
                got=path,
                hint=f"pass {option('overwrite', True)} to replace it, or choose another {option(name)}",
            )
        )
    remove_stale_temporaries(path)
    return path


def check_run_folder(
    path: str | os.PathLike, name: str, *, own: Iterable[str], inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Check that folder *path* can hold a new run: absent, empty, or (with *overwrite*) holding featx's files.

    *own* are the glob patterns of the files a run writes there; with
    *overwrite* those are replaced when the run finishes and any other file is
    kept, so a folder holding another run is never mixed with this one.
    Create nothing.
    """
    path = check_writable_dir(path, name)
    if not path.is_dir():
        return path
    present = sorted(p.name for p in path.iterdir() if not _is_temporary(p))
    if present and not overwrite:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise OutputPathError(
            message(
                f"the run folder {option(name)} is not empty ({len(present):,} files: {shown})",
                got=path,
                hint=f"pass {option('overwrite', True)} to replace featx's files there, or choose another {option(name)}",
            )
        )
    if overwrite:
        inputs = list(inputs)
        for doomed in (p for pattern in own for p in path.glob(pattern)):
            clash = same_file_as(doomed, inputs)
            if clash is not None:
                raise _refuse(path, name, f"{option('overwrite', True)} would delete '{clash}', an input of this command")
    return path


# --------------------------------------------------------------------------- temporary files and folders


def temporary_path(path: str | os.PathLike) -> Path:
    """The name *path* is written under by this process before it is renamed: ``.<name>.tmp-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _is_temporary(path: Path) -> bool:
    pid = path.name.rsplit(".tmp-", 1)[-1]
    return path.name.startswith(".") and ".tmp-" in path.name and pid.isdigit()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(path: str | os.PathLike, pattern: str | None = None) -> list[Path]:
    """Delete the temporary files (or folders) of *path* left by dead processes (or by this one).

    Those are ``.<name>.tmp-<pid>`` beside *path* (:func:`temporary_path`), or,
    with *pattern*, the entries of folder *path* that match it and end in
    ``.tmp-<pid>``.  One of a live process is another run writing now: it is
    kept.  Returns what was deleted.
    """
    if os.name != "posix":
        return []  # os.kill(pid, 0) only probes a process on POSIX
    path = Path(path)
    found = path.glob(pattern) if pattern is not None else path.parent.glob(f".{path.name}.tmp-*")
    removed = []
    for tmp in found:
        pid = tmp.name.rsplit("-", 1)[-1]
        if _is_temporary(tmp) and (int(pid) == os.getpid() or not _process_exists(int(pid))):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
