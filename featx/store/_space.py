"""Disk space: will the rest of an extraction fit, and what to say when a write fails.

Before a run, the bytes still to write are compared with the free space where
they go (:func:`check_free_space`): the part files of the rows still to do,
and the final file, which is written whole beside the store while the parts
(and, when layers are added or rows updated, the old store) still exist.
When a write fails anyway (another program filled the disk, a quota, a failing
device), :func:`write_error` turns the ``OSError`` or h5py's ``RuntimeError``
into one line that says how much is safe and how much is needed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskFullError, StoreWriteError, message, option
from ..formatting import format_bytes

__all__ = ["SpaceNeeded", "check_free_space", "failed_errno", "free_bytes", "write_error"]

# A margin for HDF5 metadata, sample tables and chunk slack beyond the feature bytes.
_OVERHEAD_BYTES = 1 << 20
_OVERHEAD_RATIO = 0.02
# errno values that mean "no room": the disk, or the user's quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# h5py reports the C library's errno inside the text of its exceptions.
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


@dataclass(frozen=True)
class SpaceNeeded:
    """Bytes an extraction still has to write.

    Attributes
    ----------
    parts : int
        Part files of the rows still to extract.
    final : int
        The final store file, written while the parts still exist.
    """

    parts: int
    final: int

    @property
    def total(self) -> int:
        margin = _OVERHEAD_BYTES + int(_OVERHEAD_RATIO * (self.parts + self.final))
        return self.parts + self.final + margin

    def describe(self) -> str:
        """The terms of :attr:`total`, which they add up to."""
        margin = self.total - self.parts - self.final
        return (
            f"parts {format_bytes(self.parts)} + final store {format_bytes(self.final)} "
            f"+ HDF5 margin {format_bytes(margin)}"
        )


def free_bytes(folder: Path) -> int:
    """Free bytes for this user in *folder*, or in its nearest existing ancestor."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(Path.cwd()).free


def check_free_space(store: Path, needed: SpaceNeeded, *, force: bool) -> None:
    """Refuse a run whose bytes cannot fit beside *store* (the parts folder is beside it too).

    Parameters
    ----------
    store : Path
        The store file.
    needed : SpaceNeeded
    force : bool
        Only warn: try anyway (the estimate is an upper bound: compression and
        failed images make the real store smaller).

    Raises
    ------
    DiskFullError
        The free space is smaller than the estimate, and *force* is false.
    """
    free = free_bytes(store.parent)
    if needed.total <= free or force:
        return
    raise DiskFullError(
        message(
            f"not enough free space for '{store}': about {format_bytes(needed.total)} is needed "
            f"({needed.describe()}), {format_bytes(free)} is free",
            hint=f"free some space, choose another {option('out')}, or use {option('force', True)} to try anyway",
        )
    )


def failed_errno(exc: BaseException) -> int | None:
    """The errno behind a failed write: ``OSError.errno``, or the one h5py writes into its message."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (OSError, RuntimeError)):
        found = _ERRNO_IN_TEXT.search(str(exc))
        if found:
            return int(found.group(1))
    return None


def write_error(
    exc: BaseException, *, store: Path, rows_safe: int, needed: SpaceNeeded | None, kept: int | None = None,
) -> StoreWriteError | None:
    """The one-line error for a write of *store* that failed with *exc*, or None if *exc* is no I/O error.

    Parameters
    ----------
    exc : BaseException
        What the write raised.
    store : Path
    rows_safe : int
        Rows the store shows (``info``) after the failure.
    kept : int, optional
        When a complete store is updated or extended (it stays as it was): the
        rows of this run kept in parts, which the next run starts from.
    needed : SpaceNeeded, optional
        What is still to write, for the message.
    """
    number = failed_errno(exc)
    if number is None:
        return None
    resume = "then run the same command again to resume"
    safe = f"{rows_safe:,} rows are safe"
    if kept is not None:
        safe += f" (the store is unchanged; {kept:,} rows of this run are kept in parts)"
    if number in _NO_SPACE:
        free = free_bytes(store.parent)
        wanted = f"; about {format_bytes(needed.total)} more is needed ({needed.describe()})" if needed else ""
        return DiskFullError(
            message(
                f"no space left on the disk of '{store}' ({os.strerror(number)}): {safe}{wanted}, "
                f"{format_bytes(free)} is free",
                hint=f"free some space, {resume}",
            )
        )
    return StoreWriteError(
        message(
            f"writing '{store}' failed ({os.strerror(number)}): {safe}",
            hint=f"check the disk, {resume}",
        )
    )
