"""Files that appear whole or not at all: temporary names, durable renames, leftovers.

HDF5 files are not crash-consistent: a process killed while HDF5 metadata is
half written can leave a file that no longer opens.  So no file of a store is
written in place: it is written under a temporary name beside its final path,
flushed to disk, then renamed over the final path, which is atomic.  The
temporary name carries the writer's process id, so that a later run can tell
the leftover of a dead process from a file another run is writing now.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import h5py

# Owned by featx.paths (every output, not only stores); re-exported for the store's modules.
from ..paths import remove_stale_temporaries, temporary_path

__all__ = [
    "discard_file", "remove_stale_temporaries", "replace_durably", "temporary_path", "write_atomically",
    "write_small_atomically",
]


def replace_durably(tmp: Path, path: Path) -> None:
    """Flush the closed file *tmp* to disk, then rename it over *path*.

    Without the flush, a power cut after the rename could leave *path* naming
    a file whose content never reached the disk.
    """
    with open(tmp, "rb+") as raw:
        os.fsync(raw.fileno())
    os.replace(tmp, path)


def discard_file(f: h5py.File, tmp: Path) -> None:
    """Close the HDF5 file *f*, open on *tmp*, after a failed write, and delete *tmp*.

    After a write failed (no space left, an I/O error), HDF5 still holds dirty
    metadata (and chunks, if it caches them); closing would write them, fail
    again, and leave the library with an open file that crashes the
    interpreter at exit (a segfault, exit 139).  Truncating the file first
    gives those writes the space they need (and frees it at once), so the close
    succeeds; the file is deleted anyway.  Files are therefore written without
    a chunk cache (``rdcc_nbytes=0``): what is left to write at close is a few
    KiB of metadata, which fits even on a disk that was full to the byte.
    """
    with contextlib.suppress(OSError):  # already gone: nothing to free
        os.truncate(tmp, 0)
    # The write already failed; its error is the one reported, not the close's.
    with contextlib.suppress(OSError, RuntimeError):
        f.close()
    tmp.unlink(missing_ok=True)


def write_atomically(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Create the HDF5 file *path* through ``fill(h5file)`` so that it appears whole or not at all.

    On any failure (an exception in *fill*, a full disk, Ctrl-C) the temporary
    file is closed safely and deleted, and *path* is left as it was.
    """
    tmp = temporary_path(path)
    try:
        f = h5py.File(tmp, "w", rdcc_nbytes=0)  # see discard_file: no dirty chunks held back
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fill(f)
        f.close()
    except BaseException:
        discard_file(f, tmp)
        raise
    try:
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_small_atomically(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Create the small HDF5 file *path* (an index, no feature data) whole or not at all, built in memory.

    The file is made by HDF5 in memory (the ``core`` driver, no backing
    store) and its bytes are written by plain file I/O: a full disk is then an
    ordinary ``OSError`` from ``write``, and HDF5 never holds a file it cannot
    flush.  Written on a full disk through HDF5, the store's index left
    metadata HDF5 could not write even after :func:`discard_file`, which it
    retried when each object was freed (``ObjectID.__dealloc__ ... Can't
    decrement id ref count``) and at exit (a segfault, exit 139).
    """
    f = h5py.File(f"{path.name}.in-memory", "w", driver="core", backing_store=False)
    try:
        fill(f)
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
