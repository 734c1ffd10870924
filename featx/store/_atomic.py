"""Files that appear whole or not at all: temporary names, durable renames, leftovers.

HDF5 files are not crash-consistent: a process killed while HDF5 metadata is
half written can leave a file that no longer opens.  So no file of a store is
written in place: it is written under a temporary name beside its final path,
flushed to disk, then renamed over the final path, which is atomic.  The
temporary name carries the writer's process id, so that a later run can tell
the leftover of a dead process from a file another run is writing now.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py

__all__ = ["temporary_path", "replace_durably", "write_atomically", "remove_stale_temporaries"]


def temporary_path(path: Path) -> Path:
    """The name *path* is written under by this process before it is renamed: ``.<name>.tmp-<pid>``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_durably(tmp: Path, path: Path) -> None:
    """Flush the closed file *tmp* to disk, then rename it over *path*.

    Without the flush, a power cut after the rename could leave *path* naming
    a file whose content never reached the disk.
    """
    with open(tmp, "rb+") as raw:
        os.fsync(raw.fileno())
    os.replace(tmp, path)


def write_atomically(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Create the HDF5 file *path* through ``fill(h5file)`` so that it appears whole or not at all."""
    tmp = temporary_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        replace_durably(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of *path* left by dead processes (or by this one).

    A file of a live process is another run writing now: it is kept.
    """
    if os.name != "posix":
        return  # os.kill(pid, 0) only probes a process on POSIX
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _process_exists(int(pid))):
            tmp.unlink(missing_ok=True)
